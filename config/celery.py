"""The Celery application; tasks live in the apps and are found by autodiscovery."""

import os
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _eager(task: Any) -> bool:
    """A task run in the caller's process (``apply()``) shares the caller's connection."""
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


@task_prerun.connect
def _check_connections(task: Any = None, **kwargs: Any) -> None:
    """Before a task, what Django does before a request: drop connections past
    ``CONN_MAX_AGE`` or marked unusable, and (``CONN_HEALTH_CHECKS``) check the one kept
    with its first query. Celery alone would open a new connection for every task, unless
    ``CELERY_DB_REUSE_MAX`` is set, and then it would check none."""
    from django.db import close_old_connections

    if not _eager(task):
        close_old_connections()


@task_postrun.connect
def _close_connections_after_failure(
    task: Any = None, state: str | None = None, **kwargs: Any
) -> None:
    """A task that failed (a soft time limit, say) may have left its connection mid-query
    in a way the health check cannot see: never hand that one to the next task."""
    if state != "SUCCESS" and not _eager(task):
        from django.db import connections

        connections.close_all()


# Task metrics (config/metrics.py), imported when the first task runs: this module loads
# before Django is set up.
@task_prerun.connect
def _task_metrics_start(**kwargs: Any) -> None:
    from config import metrics

    metrics.task_started(**kwargs)


@task_postrun.connect
def _task_metrics_end(**kwargs: Any) -> None:
    from config import metrics

    metrics.task_finished(**kwargs)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _metrics_process_exited(**kwargs: Any) -> None:
    from config import metrics

    metrics.process_exited()


@setup_logging.connect
def _logging(logfile: str | None = None, **kwargs: Any) -> None:
    """Django's LOGGING (config/logs.py), not Celery's own: one format for every process.
    Celery then leaves stdout alone, so what prints there (the console email backend's
    messages) stays plain output, not WARNING log records."""
    from config import logs

    logs.configure_from_settings(logfile)


@worker_init.connect
def _tracing_in_worker(**kwargs: Any) -> None:
    """Traces, when configured (config/tracing.py). Set up before the pool forks: the
    span processor starts its thread again in each child."""
    from config import tracing

    tracing.setup("worker")


@worker_process_init.connect
def _tracing_in_child(**kwargs: Any) -> None:
    from config import tracing

    tracing.setup("worker")


@worker_process_shutdown.connect
def _flush_traces(**kwargs: Any) -> None:
    from config import tracing

    tracing.flush()
