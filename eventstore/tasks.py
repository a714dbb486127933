"""Celery tasks of the event store: thin shells around the subscription engine."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from eventstore import subscriptions, wakeups

logger = logging.getLogger(__name__)


# Delays before looking again for events held above the horizon by an open transaction;
# after the last one, the periodic safety net takes over.
RECHECK_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@shared_task(name="eventstore.tasks.run_subscriber", acks_late=True, ignore_result=True)
def run_subscriber(name: str, recheck: int = 0) -> str:
    """Catch one subscriber up; duplicates are harmless (lock + checkpoint)."""
    wakeups.clear(name)
    try:
        subscriber = subscriptions.get(name)
    except LookupError:
        logger.error("wake-up for unknown subscriber %r dropped", name)
        return "unknown"
    budget = settings.SUBSCRIBER_TASK_TIME_BUDGET_SECONDS
    result = subscriptions.catch_up(subscriber, time_budget=budget)
    if result.stopped == "time_budget":
        run_subscriber.delay(name)  # let other tasks in between long catch-ups
    elif (
        result.stopped == "caught_up"
        and recheck < len(RECHECK_DELAYS)
        and subscriptions.has_pending(subscriber)
    ):
        run_subscriber.apply_async((name, recheck + 1), countdown=RECHECK_DELAYS[recheck])
    return result.stopped


@shared_task(name="eventstore.tasks.wake_all_subscribers", ignore_result=True)
def wake_all_subscribers() -> int:
    """The safety net (Celery beat): wakes every subscriber, whatever was lost."""
    names = [subscriber.name for subscriber in subscriptions.all_subscribers()]
    for name in names:
        run_subscriber.delay(name)
    return len(names)
