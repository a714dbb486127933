"""Celery tasks of the sagas: thin shells around :mod:`sagas.welcome`."""

from celery import shared_task

from sagas import welcome


@shared_task(name="sagas.tasks.run_saga_step", acks_late=True, ignore_result=True)
def run_saga_step(instance_id: int) -> str:
    return welcome.run(instance_id)


@shared_task(name="sagas.tasks.sweep_due_sagas", ignore_result=True)
def sweep_due_sagas() -> int:
    """Periodic: queue steps that are due but whose task was lost (broker down, crash)."""
    return welcome.sweep()
