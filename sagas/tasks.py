"""Celery tasks of the sagas: thin shells around :mod:`sagas.runner` and :mod:`sagas.dispatch`."""

import structlog
from celery import shared_task

from eventstore import wakeups
from sagas import dispatch, runner

logger = structlog.stdlib.get_logger(__name__)


@shared_task(name=dispatch.RUN_STEP_TASK, acks_late=True, ignore_result=True)
def run_saga_step(instance_id: int) -> str:
    """Run one instance's due steps (queued on its saga's queue; duplicates are harmless)."""
    wakeups.clear(dispatch.step_key(instance_id), dispatch.busy_key(instance_id))
    return runner.run(instance_id)


@shared_task(name="sagas.tasks.sweep_due_sagas", ignore_result=True)
def sweep_due_sagas() -> int:
    """Periodic (beat): queue the steps falling due soon whose task was lost or not yet queued."""
    queued = dispatch.sweep()
    # Every few seconds: only a sweep that found lost or due work is worth a line at INFO.
    (logger.info if queued else logger.debug)("saga sweep", queued=queued)
    return queued
