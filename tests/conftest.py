"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from django.db.backends.postgresql.operations import DatabaseOperations

_original_flush = DatabaseOperations.execute_sql_flush


def _flush_past_the_append_only_trigger(self: DatabaseOperations, sql_list: list[str]) -> None:
    # Between transactional tests Django TRUNCATEs every table; the events table refuses
    # that by design, so the test database (we are superuser here) skips triggers for it.
    with self.connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        _original_flush(self, sql_list)
    finally:
        with self.connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")


DatabaseOperations.execute_sql_flush = _flush_past_the_append_only_trigger


def run_in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads started together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def threads() -> Iterator[Callable[[int, Callable[[int], Any]], list[Any]]]:
    return run_in_threads


@pytest.fixture
def celery_worker(transactional_db) -> Iterator[Any]:
    """A real Celery worker (in this process, a thread) consuming the real Redis broker."""
    from celery.contrib.testing.worker import start_worker

    import eventstore.tasks  # noqa: F401  (registers the tasks with the app)
    from config.celery import app

    app.control.purge()
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30
    ) as worker:
        yield worker
