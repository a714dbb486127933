"""Waking subscribers through Celery, at most one queued wake-up per subscriber.

A Redis key marks "a wake-up is queued"; the task deletes it before it reads the feed,
so an append that lands after the deletion queues a new one and nothing is missed. If
Redis is unreachable the append has still committed: the periodic safety net (Celery
beat, every ``SUBSCRIBER_SAFETY_NET_SECONDS``) and the next wake-up catch up.
"""

from __future__ import annotations

import contextlib
import logging

from django.core.cache import cache

logger = logging.getLogger(__name__)

WAKE_KEY_TTL_SECONDS = 30


def wake_key(name: str) -> str:
    return f"eventstore:wake:{name}"


def wake(names: list[str]) -> None:
    """Queue a catch-up for each subscriber that has none queued. Never raises."""
    from eventstore.tasks import run_subscriber

    for name in names:
        try:
            if cache.add(wake_key(name), 1, WAKE_KEY_TTL_SECONDS):
                run_subscriber.delay(name)
        except Exception as exc:  # the broker or Redis is down: the safety net covers it
            logger.warning("could not queue a wake-up for %s (%s); the safety net will", name, exc)
            with contextlib.suppress(Exception):
                cache.delete(wake_key(name))


def clear(name: str) -> None:
    try:
        cache.delete(wake_key(name))
    except Exception as exc:
        logger.warning("could not clear the wake-up key of %s: %s", name, exc)
