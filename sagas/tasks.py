"""Celery tasks of the sagas: thin shells around :mod:`sagas.welcome`."""

from celery import shared_task

from eventstore import wakeups
from sagas import steps, welcome

# The one delayed look a runner that found another at work leaves behind.
RUNNER_RETRY_KEY = "sagas:runner:retry"


@shared_task(name="sagas.tasks.run_due_saga_steps", acks_late=True, ignore_result=True)
def run_due_saga_steps(retry: bool = False) -> int:
    """Run every due step; at most one is queued to run now (see steps.run_turn)."""
    if retry:
        wakeups.clear(RUNNER_RETRY_KEY)
    with steps.runner_lock() as mine:
        if mine:
            ran, out_of_time = welcome.run_turn()
    if not mine:
        # Another runner is at work. It clears the mark and looks once more before it
        # stops, so what queued this task is not lost; but it may be past that look and
        # not yet gone, so look again in a moment rather than leave it to the sweep. One
        # such look at a time: each one that finds the runner busy again leaves the
        # next, and a delayed run per busy task would pile up while the runner works.
        # (Waiting here for its lock would hold a pool process the subscribers need.)
        wakeups.send_once(
            RUNNER_RETRY_KEY,
            run_due_saga_steps,
            kwargs={"retry": True},
            countdown=steps.RUNNER_TIME_BUDGET_SECONDS,
            what="a later look for due saga steps",
        )
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
