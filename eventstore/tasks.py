"""Celery tasks of the event store: thin shells around the subscription engine."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from eventstore import progress, replay, subscribers, subscriptions, wakeups
from eventstore.subscribers import Projection

logger = logging.getLogger(__name__)


# Delays before looking again for events held above the horizon by an open transaction;
# after the last one, the periodic safety net takes over.
RECHECK_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@shared_task(name=wakeups.RUN_SUBSCRIBER_TASK, acks_late=True, ignore_result=True)
def run_subscriber(name: str, recheck: int = 0, partition: int | None = None) -> str:
    """Catch one partition up (every partition, without one); duplicates are harmless
    (lock + checkpoint)."""
    try:
        subscriber = subscribers.get(name)
    except LookupError:
        logger.error("wake-up for unknown subscriber %r dropped", name)
        return "unknown"
    if partition is None or partition >= subscriber.partition_count:
        # From a release before partitions, or for another count: the safety net's way.
        wakeups.wake([(name, p.number) for p in subscribers.partitions_of(subscriber)])
        return "woke every partition"
    wakeups.clear(
        wakeups.recheck_key(name, partition) if recheck else wakeups.wake_key(name, partition)
    )
    budget = settings.SUBSCRIBER_TASK_TIME_BUDGET_SECONDS
    result = subscriptions.catch_up(subscriber, partition=partition, time_budget=budget)
    if result.stopped == "time_budget":
        wakeups.wake([(name, partition)])  # let other tasks in between long catch-ups
    elif (
        result.stopped == "caught_up"
        and recheck < len(RECHECK_DELAYS)
        and progress.has_pending(subscribers.partitions_of(subscriber)[partition])
    ):
        wakeups.recheck(name, partition, recheck + 1, RECHECK_DELAYS[recheck])
    return result.stopped


@shared_task(name="eventstore.tasks.wake_all_subscribers", ignore_result=True)
def wake_all_subscribers() -> int:
    """The safety net (Celery beat): wakes every partition of every subscriber."""
    targets = [
        (partition.name, partition.number)
        for subscriber in subscribers.all_subscribers()
        for partition in subscribers.partitions_of(subscriber)
    ]
    wakeups.wake(targets)
    return len(targets)


REPLAY_PROGRESS_TTL_SECONDS = 24 * 3600
# Celery's default soft limit (minutes) would kill a rebuild of millions of events.
REPLAY_TIME_LIMIT_SECONDS = 6 * 3600


def replay_progress_key(name: str) -> str:
    return f"eventstore:replay:{name}"


def report_replay(name: str, progress: dict[str, Any]) -> None:
    """Store a replay's progress for the admin page; a cache outage must not stop it."""
    try:
        cache.set(replay_progress_key(name), progress, REPLAY_PROGRESS_TTL_SECONDS)
    except Exception as exc:
        logger.warning("could not store the progress of the %s replay: %s", name, exc)


@shared_task(
    name="eventstore.tasks.replay_projection",
    ignore_result=True,
    # Not acks_late: a replay that dies leaves the live read model untouched; an operator
    # starts it again, rather than a redelivery looping on whatever killed the worker.
    acks_late=False,
    soft_time_limit=REPLAY_TIME_LIMIT_SECONDS,
    time_limit=REPLAY_TIME_LIMIT_SECONDS + 60,
)
def replay_projection(name: str) -> str:
    """Rebuild one projection (started from the admin), reporting progress in the cache."""
    try:
        projection = subscribers.get(name)
    except LookupError:
        logger.error("replay of unknown subscriber %r dropped", name)
        return "unknown"
    if not isinstance(projection, Projection):
        logger.error("replay of %r dropped: only projections are replayed", name)
        return "not a projection"
    try:
        with replay.exclusive(projection):
            return _replay_reporting(projection)
    except replay.ReplayInProgress:
        logger.warning("replay of %s is already running; this one is dropped", name)
        return "busy"


def _replay_reporting(projection: Projection) -> str:
    name = projection.name
    now = timezone.now().isoformat()
    progress: dict[str, Any] = {"state": "running", "done": 0, "started_at": now}
    try:
        progress.update(total=replay.count_events(projection), updated_at=now)
        report_replay(name, progress)

        def advance(count: int) -> None:
            progress.update(done=progress["done"] + count, updated_at=timezone.now().isoformat())
            report_replay(name, progress)

        result = replay.rebuild(projection, progress=advance)
    except Exception as exc:
        logger.exception("replay of %s failed; the live read model is untouched", name)
        progress.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    else:
        progress.update(state="done", done=result.events, rows=result.rows)
        return "done"
    finally:
        if progress["state"] == "running":  # interrupted (worker shutdown, time limit)
            progress.update(state="failed", error="interrupted")
        finished = timezone.now().isoformat()
        progress.update(finished_at=finished, updated_at=finished)
        report_replay(name, progress)
