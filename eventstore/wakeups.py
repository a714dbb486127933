"""Queueing Celery tasks at most once at a time: wake-ups of subscribers and the like.

A Redis key marks "this task is queued and has not started". The task deletes the key
before it reads anything, so work that lands after the deletion queues a new one and
nothing is missed, while a burst of appends queues one task, not one per append. Every
path that queues a subscriber (after commit, a re-check, the time-budget hand-over,
the safety net) goes through here, so the queue holds at most one immediate and one
delayed task per subscriber, whatever the load.

If Redis is unreachable the append has still committed: the periodic safety net
(Celery beat, every ``SUBSCRIBER_SAFETY_NET_SECONDS``) and the next wake-up catch up.
A key whose task was lost expires after ``KEY_TTL_SECONDS`` (plus any countdown).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.core.cache import cache

from config.throttling import redis_client

logger = logging.getLogger(__name__)

KEY_TTL_SECONDS = 30


def wake_key(name: str) -> str:
    return f"eventstore:wake:{name}"


def recheck_key(name: str) -> str:
    return f"eventstore:recheck:{name}"


def _set(key: str, ttl: int) -> bool:
    """SET NX on a kept client: Django's cache.add costs twice the CPU (a new client per
    call), and every commit comes here once per subscriber. Raises if Redis is down."""
    return bool(redis_client(cache).set(cache.make_and_validate_key(key), 1, nx=True, ex=ttl))


def _set_many(keys: list[str], ttl: int | list[int]) -> list[bool]:
    """:func:`_set` for several keys in one round trip (a pipeline, not a transaction);
    ``ttl`` for all of them, or one per key."""
    ttls = ttl if isinstance(ttl, list) else [ttl] * len(keys)
    pipe = redis_client(cache).pipeline(transaction=False)
    for key, seconds in zip(keys, ttls, strict=True):
        pipe.set(cache.make_and_validate_key(key), 1, nx=True, ex=seconds)
    return [bool(reply) for reply in pipe.execute()]


def _delete(*keys: str) -> None:
    redis_client(cache).delete(*(cache.make_and_validate_key(key) for key in keys))


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
    """:func:`send_once` for many ``(key, task, args, countdown)`` jobs: one round trip to
    Redis for all the marks, then a task for each whose mark was free. Never raises;
    returns how many were queued."""
    if not jobs:
        return 0
    keys = [job[0] for job in jobs]
    try:
        free = _set_many(keys, [KEY_TTL_SECONDS + int(job[3]) for job in jobs])
    except Exception as exc:  # Redis is down: the safety net covers them
        _not_queued(keys, [what], exc)
        return 0
    queued = 0
    for (key, task, args, countdown), mine in zip(jobs, free, strict=True):
        if mine:
            queued += _queue(key, task, args, None, countdown, what)
    return queued


def mark(key: str) -> None:
    """Set ``key`` without queueing anything: the caller itself will do what it stands
    for, so wake-ups meanwhile need not queue a task. Never raises."""
    try:
        _set(key, KEY_TTL_SECONDS)
    except Exception as exc:
        logger.warning("could not set %s: %s", key, exc)


def clear(*keys: str) -> None:
    """Called by the task as it starts: from now on, new work queues a new task."""
    try:
        _delete(*keys)
    except Exception as exc:
        logger.warning("could not clear %s: %s", ", ".join(keys), exc)


# The subscriber names held by the innermost enclosing coalesced() block, if any (an
# insertion-ordered set); a context variable, so threads and tasks each have their own.
_collecting: ContextVar[dict[str, None] | None] = ContextVar("wake_ups_held", default=None)


@contextlib.contextmanager
def coalesced() -> Iterator[None]:
    """Hold the :func:`wake` calls made inside the block, and wake each subscriber once
    as it ends, even if the block raises (nested blocks: the outermost). Never raises of
    its own.

    For a transaction that commits many appends (the saga runner's batches): each
    append's after-commit wake-up would ask Redis again for the same subscribers. Their
    events have all committed before the first of those wake-ups runs, so one per
    subscriber, sent after the commit, covers them all. The block must enclose the
    commit: wake-ups of a transaction that commits after it ends are not held.
    """
    if _collecting.get() is not None:
        yield
        return
    names: dict[str, None] = {}
    token = _collecting.set(names)
    try:
        yield
    finally:
        _collecting.reset(token)
        if names:
            wake(list(names))


def wake(names: list[str]) -> None:
    """Queue a catch-up for each subscriber that has none queued. Never raises.

    One round trip to Redis for all of them; then a task for each whose mark was free.
    Inside a :func:`coalesced` block, only noted, for the block's end.
    """
    from eventstore.tasks import run_subscriber

    collecting = _collecting.get()
    if collecting is not None:
        collecting.update(dict.fromkeys(names))
        return
    keys = [wake_key(name) for name in names]
    try:
        free = _set_many(keys, KEY_TTL_SECONDS)
    except Exception as exc:  # Redis is down: the safety net covers them
        _not_queued(keys, [f"a wake-up for {name}" for name in names], exc)
        return
    for name, key, queue in zip(names, keys, free, strict=True):
        if queue:
            _queue(key, run_subscriber, (name,), None, 0.0, f"a wake-up for {name}")


def recheck(name: str, attempt: int, countdown: float) -> bool:
    """Queue a delayed look for events held above the horizon, unless one is queued.

    Kept apart from :func:`wake`: a pending re-check must not delay a fresh wake-up.
    """
    from eventstore.tasks import run_subscriber

    return send_once(
        recheck_key(name), run_subscriber, (name, attempt), countdown, what=f"a re-check of {name}"
    )
