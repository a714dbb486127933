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


@pytest.fixture(scope="session")
def _no_sessions_left(django_db_setup, django_db_blocker) -> Iterator[None]:
    """At the end of the run, end the test database's other sessions, so that pytest-django
    can drop it: the in-process worker's pool threads keep their persistent connections
    after it stops. Session-scoped, so that no test's server loses its connection."""
    yield
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )


@pytest.fixture
def celery_worker(transactional_db, _no_sessions_left) -> Iterator[Any]:
    """A real Celery worker (in this process, a thread) consuming the real Redis broker."""
    from celery.contrib.testing.worker import start_worker
    from django.conf import settings

    import eventstore.tasks  # noqa: F401  (registers the tasks with the app)
    from config.celery import app

    app.control.purge()
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=30,
        queues=["celery", settings.MAIL_QUEUE],
    ) as worker:
        yield worker


@pytest.fixture
def client_user(transactional_db) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="client", password="client-pass-123")


@pytest.fixture
def api(client_user) -> Any:
    """An API client authenticated with a bearer token (not staff)."""
    from rest_framework.test import APIClient

    from users.authentication import issue_token

    _, token = issue_token(client_user, "tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    client.token = token
    return client


@pytest.fixture
def staff(transactional_db) -> Any:
    """A staff member logged in with a session, as in a browser."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_user(
        username="staff", password="staff-pass-123", is_staff=True
    )
    client = APIClient()
    client.force_login(user)
    client.user = user
    return client


def grant(user: Any, *perms: str) -> Any:
    """Give ``user`` the permissions named ``app_label.codename``; returns it fresh."""
    from django.contrib.auth.models import Permission

    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)  # has_perm caches what it saw


@pytest.fixture
def event_viewer(transactional_db) -> Any:
    """A staff member with the admin's event permissions, logged in with a session."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_user(
        username="viewer", password="viewer-pass-123", is_staff=True
    )
    user = grant(user, "eventstore.view_event", "eventstore.view_stream")
    client = APIClient()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    """Throttle counters and wake-up keys live in Redis; start each test clean."""
    from django.core.cache import cache

    from config.throttling import forget_leases

    cache.clear()
    forget_leases()
    return


@pytest.fixture
def wake_sends(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The subscribers whose wake-up marks each write to Redis asks for, one list per write
    (a round trip): a spy on redis-py's real connections, which still send everything. It
    reads the wire format (RESP) that redis-py's ``send_packed_command`` writes; a
    redis-py that sends commands another way would leave it empty."""
    import re

    from redis.connection import AbstractConnection

    sends: list[list[str]] = []
    send = AbstractConnection.send_packed_command

    def spy(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (str, bytes)) else command
        payload = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        marks = re.findall(rb"\$3\r\nSET\r\n\$\d+\r\n[^\r]*eventstore:wake:([^\r:]+):\d+", payload)
        if marks:
            sends.append([mark.decode() for mark in marks])
        return send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    return sends


def settle(timeout: float = 60.0) -> None:
    """Wait until every event committed so far is below the feed's horizon.

    The horizon is cluster-wide: a transaction open in any database of the same
    PostgreSQL server (another test run, a benchmark) holds it back. That delays
    subscribers, it never makes them skip; tests that expect "caught up" wait here.
    """
    import time

    from eventstore import reads

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT max(transaction_id)::text FROM events")
        newest = cursor.fetchone()[0]
    if newest is None:
        return
    deadline = time.monotonic() + timeout
    while reads.horizon().transaction_id <= int(newest):
        if time.monotonic() > deadline:
            raise AssertionError("another transaction on this PostgreSQL server stays open")
        time.sleep(0.01)
