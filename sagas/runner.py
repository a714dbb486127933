"""Running one saga instance's steps: in order, once each, under the instance's own lock.

A Celery task per instance calls :func:`run`. It holds the instance's session advisory
lock (which takes no transaction id, so a step waiting on a mail server holds back no
subscriber's horizon) and runs every step that is due, one after another. What a step
wrote and the instance's new state commit in one transaction, written only if nobody (the
saga's subscriber, an operator) changed the instance's status or step meanwhile;
otherwise the step's writes roll back and the runner reads the instance again.

Instances of different sagas, or of the same saga, run concurrently on as many worker
processes and threads as there are: no lock spans two instances.

A step that raises is recorded (attempts, last error, next attempt) and retried with
backoff; after the saga's ``max_attempts`` the instance is failed. A step can say more:
:class:`Retry` (try again after a given delay, counted or not), :class:`GiveUp` (fail
now, e.g. a mail relay's permanent refusal).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from sagas import dispatch, metrics, observe, registry
from sagas.models import SagaInstance
from sagas.registry import SagaType

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300
# A run stops after this many steps (a saga whose steps loop is a bug, not a reason to
# hold a worker thread for ever); the rest is dispatched again.
MAX_STEPS_PER_RUN = 20

# Fields a step may change. ``handled_events`` is the subscriber's alone, so a step
# finishing while the subscriber records an event does not undo that record.
STEP_FIELDS = ["status", "step", "attempts", "next_attempt_at", "last_error",
               "issued_commands", "data", "updated_at", "finished_at"]  # fmt: skip
OPEN = (SagaInstance.Status.STARTED, SagaInstance.Status.WAITING)


class Retry(Exception):
    """Try this step again ``after`` seconds; ``counts``: as a failed attempt."""

    def __init__(self, after: float, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.after, self.counts = after, counts


class GiveUp(Exception):
    """The step cannot succeed: fail the instance now, with this reason."""


class _ChangedMeanwhile(Exception):
    pass


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


@contextlib.contextmanager
def instance_lock(instance_id: int) -> Iterator[bool]:
    """The instance's session advisory lock if free, released after."""
    key = f"saga-instance:{instance_id}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key])
        locked = cursor.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            _unlock(key)


def _unlock(key: str) -> None:
    """Release the lock; if that fails, close the session, which does. A worker keeps its
    connection across tasks: a lock left on it would keep the instance busy for good."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
    except Exception as exc:
        logger.warning("could not release the lock of %s (%s); closing the connection", key, exc)
        connection.close()


def run(instance_id: int, *, max_steps: int = MAX_STEPS_PER_RUN) -> str:
    """Run the instance's due steps (at most ``max_steps``); returns what happened last,
    for logs and tests.

    Busy elsewhere: that runner goes on with it, and a later look is queued in case it
    was just leaving. Whatever is left due later is dispatched for its time.
    """
    with instance_lock(instance_id) as locked:
        if not locked:
            dispatch.look_again(instance_id)
            return "busy"
        instance, outcome, fresh = None, "missing", False
        for _ in range(max_steps):
            if not fresh:
                instance = SagaInstance.objects.filter(pk=instance_id).first()
                if instance is None:
                    return "missing"
            try:
                saga = registry.get(instance.saga_type)
            except LookupError:
                logger.error("saga %s has an unknown type %r", instance_id, instance.saga_type)
                return "unknown saga type"
            # After a step that saved, the row is what this object holds (its update was
            # conditional on the status and step read): no need to read it again.
            outcome, fresh = _run_one(instance, saga)
            if outcome != "changed meanwhile" and outcome not in saga.steps:
                break
    if instance is not None:
        if not fresh:
            instance.refresh_from_db()
        if instance.is_open and instance.next_attempt_at is not None:
            dispatch.schedule([instance])
    return outcome


def _run_one(instance: SagaInstance, saga: SagaType) -> tuple[str, bool]:
    """What happened, and whether ``instance`` is now what its row holds (a step saved)."""
    if not instance.is_open:
        return f"already {instance.status}", True
    if instance.next_attempt_at and instance.next_attempt_at > timezone.now():
        return "not due", True
    step = saga.steps.get(instance.step)
    if step is None:
        return f"waiting for an event ({instance.step})", True
    seen = (instance.status, instance.step)
    before = {field: copy.deepcopy(getattr(instance, field)) for field in STEP_FIELDS}
    started = time.perf_counter()
    with observe.observed_step(instance, saga.name) as report:
        try:
            with transaction.atomic():
                step(instance)
                instance.updated_at = timezone.now()
                _save_step(instance, *seen, before)
        except _ChangedMeanwhile:
            metrics.step_timed(saga.name, seen[1], "changed", time.perf_counter() - started)
            return report("changed meanwhile"), False
        except Exception as exc:
            metrics.step_timed(saga.name, seen[1], "failed", time.perf_counter() - started)
            return report(_record_failure(instance.pk, seen, exc, saga)), False
        metrics.step_timed(saga.name, seen[1], "done", time.perf_counter() - started)
        return report(instance.step), True


def _save_step(
    instance: SagaInstance, status: str, step: str, before: dict[str, Any] | None = None
) -> None:
    """Write what the step changed if the instance is still at (status, step)."""
    fields = [f for f in STEP_FIELDS if before is None or getattr(instance, f) != before[f]]
    changed = SagaInstance.objects.filter(pk=instance.pk, status=status, step=step).update(
        **{field: getattr(instance, field) for field in fields}
    )
    if not changed:
        raise _ChangedMeanwhile


def _record_failure(instance_id: int, seen: tuple[str, str], exc: Exception, saga: SagaType) -> str:
    """Count a failed attempt and plan the next, or give up; still under the lock."""
    instance = SagaInstance.objects.get(pk=instance_id)  # forget what the step changed
    if (instance.status, instance.step) != seen:
        return "changed meanwhile"
    now = timezone.now()
    instance.updated_at = now
    counts = not isinstance(exc, Retry) or exc.counts
    if counts:
        instance.attempts += 1
    if not isinstance(exc, Retry) or counts:
        instance.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    if isinstance(exc, GiveUp) or instance.attempts >= saga.max_attempts:
        instance.status = SagaInstance.Status.FAILED
        instance.next_attempt_at = None
        instance.finished_at = now
        logger.error("saga %s (%s) failed at step %s: %s", instance.pk, saga.name, seen[1], exc)
        outcome = "failed"
    else:
        delay = (
            timedelta(seconds=exc.after) if isinstance(exc, Retry) else backoff(instance.attempts)
        )
        instance.next_attempt_at = now + delay
        if counts:
            logger.warning(
                "saga %s (%s) step %s failed (attempt %s), retry at %s: %s",
                instance.pk, saga.name, seen[1], instance.attempts, instance.next_attempt_at, exc,
            )  # fmt: skip
        outcome = "failed attempt" if counts else "postponed"
    try:
        _save_step(instance, *seen)
    except _ChangedMeanwhile:
        return "changed meanwhile"
    return outcome


def mark_cancelled(instance: SagaInstance, reason: str) -> None:
    """Change the instance to cancelled in memory (the caller saves it)."""
    instance.status = SagaInstance.Status.CANCELLED
    instance.last_error = reason
    instance.next_attempt_at = None
    instance.finished_at = instance.updated_at = timezone.now()


def retry(instance: SagaInstance) -> None:
    """Operator action: run a failed (or stuck) instance's step again now."""
    if instance.status not in (SagaInstance.Status.FAILED, *OPEN):
        raise ValueError(f"saga {instance.pk} is {instance.status}; only failed or open ones retry")
    if instance.status == SagaInstance.Status.FAILED:
        instance.status = SagaInstance.Status.STARTED
    instance.attempts = 0
    instance.next_attempt_at = instance.updated_at = timezone.now()
    instance.finished_at = None
    instance.save()
    transaction.on_commit(lambda: dispatch.schedule([instance]))


def cancel(instance: SagaInstance, reason: str = "cancelled by an operator") -> None:
    """Operator action: give an open or failed instance up."""
    if not instance.is_open and instance.status != SagaInstance.Status.FAILED:
        raise ValueError(f"saga {instance.pk} is {instance.status} and cannot be cancelled")
    mark_cancelled(instance, reason)
    instance.save()
