"""Running saga steps: one at a time per instance, retried with backoff, never twice.

A step runs inside a transaction holding the instance's row lock, so two workers
cannot run the same step at once; what the step did and the instance's new state
commit together. A step that raises is recorded (attempts, last error, next attempt)
and retried later; after ``MAX_ATTEMPTS`` the instance is marked failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from sagas.models import SagaInstance

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_BACKOFF_SECONDS = 300
Step = Callable[[SagaInstance], None]


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


def schedule(instance: SagaInstance) -> None:
    """Queue the instance's next step for when it is due, once this transaction commits."""
    from sagas.tasks import run_saga_step

    def send() -> None:
        delay = 0.0
        if instance.next_attempt_at is not None:
            delay = max(0.0, (instance.next_attempt_at - timezone.now()).total_seconds())
        try:
            run_saga_step.apply_async((instance.pk,), countdown=delay)
        except Exception as exc:  # broker down: the periodic sweep picks due steps up
            logger.warning("could not queue saga step %s (%s); the sweep will", instance.pk, exc)

    transaction.on_commit(send)


def run_step(instance_id: int, steps: dict[str, Step]) -> str:
    """Run the due step of one instance; returns what happened, for logs and tests."""
    with transaction.atomic():
        instance = (
            SagaInstance.objects.select_for_update(skip_locked=True).filter(pk=instance_id).first()
        )
        if instance is None:
            return "busy-or-missing"
        if not instance.is_open:
            return f"already {instance.status}"
        if instance.next_attempt_at and instance.next_attempt_at > timezone.now():
            return "not due"
        step = steps.get(instance.step)
        if step is None:
            return f"waiting for an event ({instance.step})"
        try:
            with transaction.atomic():
                step(instance)
        except Exception as exc:
            instance.refresh_from_db()  # forget what the failed step changed in memory
            record_failure(instance, exc)
            return "failed attempt"
        instance.updated_at = timezone.now()
        instance.save()
        if instance.is_open and instance.step in steps:
            schedule(instance)
        return instance.step


def record_failure(instance: SagaInstance, exc: Exception) -> None:
    """Count a failed attempt and plan the next (or give up); inside the step's lock."""
    instance.attempts += 1
    instance.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    instance.updated_at = timezone.now()
    if instance.attempts >= MAX_ATTEMPTS:
        instance.status = SagaInstance.Status.FAILED
        instance.next_attempt_at = None
        instance.finished_at = timezone.now()
        logger.error("saga %s failed for good at %s: %s", instance.pk, instance.step, exc)
    else:
        instance.next_attempt_at = timezone.now() + backoff(instance.attempts)
        logger.warning(
            "saga %s step %s failed (attempt %s), retry at %s: %s",
            instance.pk, instance.step, instance.attempts, instance.next_attempt_at, exc,
        )  # fmt: skip
        schedule(instance)
    instance.save()


def due_instances(steps: dict[str, Step], limit: int = 500) -> list[int]:
    """Open instances whose step is due: what the periodic sweep runs."""
    return list(
        SagaInstance.objects.filter(
            status__in=[SagaInstance.Status.STARTED, SagaInstance.Status.WAITING],
            step__in=list(steps),
            next_attempt_at__lte=timezone.now(),
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def retry(instance: SagaInstance) -> None:
    """Operator action: run a failed (or stuck) instance's step again now."""
    if instance.status not in (SagaInstance.Status.FAILED, *_OPEN):
        raise ValueError(f"saga {instance.pk} is {instance.status}; only failed or open ones retry")
    instance.status = (
        SagaInstance.Status.STARTED
        if instance.status == SagaInstance.Status.FAILED
        else instance.status
    )
    instance.attempts = 0
    instance.next_attempt_at = timezone.now()
    instance.finished_at = None
    instance.updated_at = timezone.now()
    instance.save()
    schedule(instance)


def cancel(instance: SagaInstance, reason: str = "cancelled by an operator") -> None:
    if not instance.is_open and instance.status != SagaInstance.Status.FAILED:
        raise ValueError(f"saga {instance.pk} is {instance.status} and cannot be cancelled")
    instance.status = SagaInstance.Status.CANCELLED
    instance.last_error = reason
    instance.next_attempt_at = None
    instance.finished_at = instance.updated_at = timezone.now()
    instance.save()


_OPEN = (SagaInstance.Status.STARTED, SagaInstance.Status.WAITING)
