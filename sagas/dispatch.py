"""Queueing saga steps as Celery tasks: one task per instance, due at its time.

A step due within ``DISPATCH_AHEAD_SECONDS`` is queued at once with a countdown, on its
saga's queue; one due later is queued by the sweep when its time comes near, so the
broker never holds tasks for days. A Redis mark per instance keeps at most one task
queued for it (the task clears the mark as it starts), and beat's sweep queues anything
whose task was lost: the broker was down, or a worker died holding it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from celery import current_app
from django.utils import timezone

from eventstore import wakeups
from sagas import registry
from sagas.models import SagaInstance

RUN_STEP_TASK = "sagas.tasks.run_saga_step"
DISPATCH_AHEAD_SECONDS = 60.0
# An instance found busy (its lock held by another run) is looked at again this soon.
BUSY_LOOK_SECONDS = 1.0
SWEEP_LIMIT = 1000
SWEEP_GRACE_SECONDS = 10.0


def step_key(instance_id: int) -> str:
    return f"sagas:step:{instance_id}"


def busy_key(instance_id: int) -> str:
    return f"sagas:busy:{instance_id}"


def _task(saga_type: str) -> object:
    try:
        queue = registry.get(saga_type).queue
    except LookupError:
        queue = None  # the runner logs the unknown type
    return current_app.signature(RUN_STEP_TASK, queue=queue)


def schedule(instances: Iterable[SagaInstance]) -> int:
    """Queue a task for each open instance whose next step falls due soon. Never raises;
    returns how many tasks were queued (the others were queued already, or are far off)."""
    now = timezone.now()
    horizon = now + timedelta(seconds=DISPATCH_AHEAD_SECONDS)
    jobs = [
        (
            step_key(instance.pk),
            _task(instance.saga_type),
            (instance.pk,),
            max(0.0, (instance.next_attempt_at - now).total_seconds()),
        )
        for instance in instances
        if instance.is_open
        and instance.next_attempt_at is not None
        and instance.next_attempt_at <= horizon
    ]
    return wakeups.send_many(jobs, what="a saga step")


def look_again(instance_id: int) -> None:
    """Queue one later look at an instance that another run holds (it may be leaving)."""
    saga_type = (
        SagaInstance.objects.filter(pk=instance_id).values_list("saga_type", flat=True).first()
    )
    if saga_type is not None:
        wakeups.send_once(
            busy_key(instance_id),
            _task(saga_type),
            (instance_id,),
            BUSY_LOOK_SECONDS,
            what="a later look at a busy saga",
        )


def sweep() -> int:
    """The safety net (beat): queue the steps falling due soon that have no task queued,
    and those overdue by more than ``SWEEP_GRACE_SECONDS`` (their task was lost). One due
    just now is most likely running: its task cleared its mark as it started."""
    now = timezone.now()
    due = (
        SagaInstance.objects.filter(
            saga_type__in=registry.names(),
            status__in=SagaInstance.OPEN,
            next_attempt_at__lte=now + timedelta(seconds=DISPATCH_AHEAD_SECONDS),
        )
        .exclude(
            next_attempt_at__gt=now - timedelta(seconds=SWEEP_GRACE_SECONDS),
            next_attempt_at__lte=now,
        )
        .order_by("next_attempt_at")[:SWEEP_LIMIT]
    )
    return schedule(due)
