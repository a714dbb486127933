"""Celery tasks of the sagas: thin shells around :mod:`sagas.welcome`."""

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from sagas import steps, welcome


@shared_task(name="sagas.tasks.run_due_saga_steps", acks_late=True, ignore_result=True)
def run_due_saga_steps() -> int:
    """Run every due step; at most one is queued to run now (see steps.run_turn)."""
    with steps.runner_lock() as mine:
        if mine:
            ran, out_of_time = welcome.run_turn()
    if not mine:
        # Another runner is at work. It clears the mark and looks once more before it
        # stops, so what queued this task is not lost; but it may be past that look and
        # not yet gone, so look again in a moment rather than leave it to the sweep.
        # (Waiting here for its lock would hold a pool process the subscribers need.)
        steps.wake_runner(timezone.now() + timedelta(seconds=steps.RUNNER_TIME_BUDGET_SECONDS))
        return 0
    if out_of_time:
        steps.queue_next_turn()  # with the lock released, so the next turn can take it
    return ran


@shared_task(name="sagas.tasks.run_saga_step", acks_late=True, ignore_result=True)
def run_saga_step(instance_id: int) -> str:
    """One instance's step; kept for messages queued before steps were run in bulk."""
    return welcome.run(instance_id)


@shared_task(name="sagas.tasks.sweep_due_sagas", ignore_result=True)
def sweep_due_sagas() -> int:
    """Periodic: run due steps whose wake-up was lost (broker down, crash)."""
    return welcome.sweep()
