"""Queueing Celery tasks at most once at a time: wake-ups of subscribers and the like.

A Redis key marks "this task is queued and has not started". The task deletes the key
before it reads anything, so work that lands after the deletion queues a new one and
nothing is missed, while a burst of appends queues one task, not one per append. Every
path that queues a subscriber's partition (after commit, a re-check, the time-budget
hand-over, the safety net) goes through here, so the queue holds at most one immediate
and one delayed task per partition, whatever the load.

If Redis is unreachable the append has still committed: the periodic safety net
(Celery beat, every ``SUBSCRIBER_SAFETY_NET_SECONDS``) and the next wake-up catch up.
A key whose task was lost expires after ``KEY_TTL_SECONDS`` (plus any countdown).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import current_app
from django.core.cache import cache

logger = logging.getLogger(__name__)

KEY_TTL_SECONDS = 30


RUN_SUBSCRIBER_TASK = "eventstore.tasks.run_subscriber"


def _run_subscriber() -> Any:
    """The catch-up task by its name: eventstore.tasks defines it and imports this module."""
    return current_app.signature(RUN_SUBSCRIBER_TASK)


def wake_key(name: str, partition: int = 0) -> str:
    return f"eventstore:wake:{name}:{partition}"


def recheck_key(name: str, partition: int = 0) -> str:
    return f"eventstore:recheck:{name}:{partition}"


def _set(key: str, ttl: int) -> bool:
    """Mark ``key`` unless it is marked (SET NX). Raises if Redis is down."""
    return cache.add(key, 1, ttl)


def _set_many(keys: list[str], ttl: int | list[int]) -> list[bool]:
    """:func:`_set` for several keys; ``ttl`` for all of them, or one per key."""
    ttls = ttl if isinstance(ttl, list) else [ttl] * len(keys)
    return [cache.add(key, 1, seconds) for key, seconds in zip(keys, ttls, strict=True)]


def _delete(*keys: str) -> None:
    cache.delete_many(keys)


def _not_queued(keys: list[str], whats: list[str], exc: Exception) -> None:
    # Clearing the marks lets the next wake-up try again. One set by another process, whose
    # task is queued, may go too: that costs at most a duplicate task, which is harmless.
    for what in whats:
        logger.warning("could not queue %s (%s); the safety net will", what, exc)
    with contextlib.suppress(Exception):
        _delete(*keys)


def _queue(
    key: str,
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    countdown: float,
    what: str,
) -> bool:
    try:
        if countdown > 0:
            task.apply_async(args, kwargs, countdown=countdown)
        else:
            task.apply_async(args, kwargs)
    except Exception as exc:  # the broker is down: the safety net covers it
        _not_queued([key], [what or key], exc)
        return False
    return True


def send_once(
    key: str,
    task: Any,
    args: tuple[Any, ...] = (),
    countdown: float = 0.0,
    *,
    kwargs: dict[str, Any] | None = None,
    what: str = "",
) -> bool:
    """Queue ``task`` unless ``key`` says one is queued already. Never raises.

    Returns whether a task was queued by this call; ``what`` names it in the log.
    """
    try:
        if not _set(key, KEY_TTL_SECONDS + int(countdown)):
            return False
    except Exception as exc:  # Redis is down: the safety net covers it
        _not_queued([key], [what or key], exc)
        return False
    return _queue(key, task, args, kwargs, countdown, what)


def send_many(jobs: list[tuple[str, Any, tuple[Any, ...], float]], *, what: str = "a task") -> int:
    """:func:`send_once` for many ``(key, task, args, countdown)`` jobs: the marks first,
    then the tasks of those whose mark was free, in one round trip. Never raises; returns
    how many were queued."""
    if not jobs:
        return 0
    keys = [job[0] for job in jobs]
    try:
        free = _set_many(keys, [KEY_TTL_SECONDS + int(job[3]) for job in jobs])
    except Exception as exc:  # Redis is down: the safety net covers them
        _not_queued(keys, [what], exc)
        return 0
    mine = [job for job, is_free in zip(jobs, free, strict=True) if is_free]
    if not mine:
        return 0
    try:
        # kombu's publish batch: the messages go out together when the block ends (one
        # Redis pipeline), not one round trip each.
        with current_app.producer_or_acquire() as producer, producer.batch():
            for _, task, args, countdown in mine:
                task.apply_async(args, countdown=countdown or None, producer=producer)
    except Exception as exc:  # the broker is down: the safety net covers them
        _not_queued([job[0] for job in mine], [what], exc)
        return 0
    return len(mine)


def clear(*keys: str) -> None:
    """Called by the task as it starts: from now on, new work queues a new task."""
    try:
        _delete(*keys)
    except Exception as exc:
        logger.warning("could not clear %s: %s", ", ".join(keys), exc)


def wake(targets: list[tuple[str, int]]) -> None:
    """Queue a catch-up for each (subscriber, partition) that has none queued. Never
    raises.

    The marks first; then a task for each whose mark was free.
    """
    keys = [wake_key(name, partition) for name, partition in targets]
    whats = [f"a wake-up for {name}[{partition}]" for name, partition in targets]
    try:
        free = _set_many(keys, KEY_TTL_SECONDS)
    except Exception as exc:  # Redis is down: the safety net covers them
        _not_queued(keys, whats, exc)
        return
    for (name, partition), key, what, queue in zip(targets, keys, whats, free, strict=True):
        if queue:
            _queue(key, _run_subscriber(), (name,), {"partition": partition}, 0.0, what)


def recheck(name: str, partition: int, attempt: int, countdown: float) -> bool:
    """Queue a delayed look for events held above the horizon, unless one is queued.

    Kept apart from :func:`wake`: a pending re-check must not delay a fresh wake-up.
    """
    return send_once(
        recheck_key(name, partition),
        _run_subscriber(),
        (name, attempt),
        countdown,
        kwargs={"partition": partition},
        what=f"a re-check of {name}[{partition}]",
    )
