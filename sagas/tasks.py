"""Celery tasks of the sagas: thin shells around :mod:`sagas.welcome`."""

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from eventstore import wakeups
from sagas import steps, welcome


@shared_task(name="sagas.tasks.run_due_saga_steps", acks_late=True, ignore_result=True)
def run_due_saga_steps() -> int:
    """Run every due step; at most one is queued to run now (see steps.wake_runner)."""
    wakeups.clear(steps.RUNNER_NOW_KEY)
    with steps.runner_lock() as mine:
        if mine:
            return welcome.run_due()
    # Another runner is at work; it may have looked for due steps just before ours
    # became due, so look again shortly rather than leave them to the sweep.
    steps.wake_runner(timezone.now() + timedelta(seconds=steps.RUNNER_TIME_BUDGET_SECONDS))
    return 0


@shared_task(name="sagas.tasks.run_saga_step", acks_late=True, ignore_result=True)
def run_saga_step(instance_id: int) -> str:
    """One instance's step; kept for messages queued before steps were run in bulk."""
    return welcome.run(instance_id)


@shared_task(name="sagas.tasks.sweep_due_sagas", ignore_result=True)
def sweep_due_sagas() -> int:
    """Periodic: run due steps whose wake-up was lost (broker down, crash)."""
    return welcome.sweep()
