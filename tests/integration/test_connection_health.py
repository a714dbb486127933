"""The service's PostgreSQL sessions, against the real server: the health check costs no
round trip on a quiet connection and replaces a session the server ended
(config/postgres/base.py); the hot statements are prepared once per session unless
DATABASE_PREPARED_STATEMENTS is off; sessions run without JIT compilation
(config/settings.py)."""

from __future__ import annotations

import select
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.db import OperationalError, connection
from django.db.backends.postgresql import base as django_postgres
from django.test.utils import CaptureQueriesContext

from eventstore import store
from tests.events import Noted
from tests.processes import raw_connection
from users import handlers, projections, selectors
from users.commands import CreateUser
from users.errors import UserNotFound
from users.models import UserRecord

pytestmark = pytest.mark.django_db(transaction=True)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def next_request() -> None:
    """What Django does at the start and end of every request (close_old_connections)."""
    connection.close_if_unusable_or_obsolete()


def terminate(pid: int) -> None:
    """End a session from another connection, as a server restart or an operator would."""
    with raw_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(500):  # the backend exits asynchronously
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                return
            time.sleep(0.01)
    pytest.fail(f"backend {pid} did not exit after pg_terminate_backend")


@pytest.fixture
def health_checks(monkeypatch) -> list[str]:
    """The SELECT 1 checks Django makes, with health checks on as in production."""
    assert connection.settings_dict["ENGINE"] == "config.postgres"
    backend_pid()  # connected
    assert connection.health_check_enabled
    checks: list[str] = []
    original = django_postgres.DatabaseWrapper.is_usable

    def counting_is_usable(self: django_postgres.DatabaseWrapper) -> bool:
        checks.append(self.alias)
        return original(self)

    monkeypatch.setattr(django_postgres.DatabaseWrapper, "is_usable", counting_is_usable)
    return checks


def test_a_quiet_connection_is_reused_without_a_round_trip(health_checks) -> None:
    pid = backend_pid()
    for _ in range(3):
        next_request()
        assert backend_pid() == pid
    assert health_checks == []


def test_a_terminated_session_is_replaced_before_the_first_query(health_checks) -> None:
    pid = backend_pid()
    next_request()
    terminate(pid)
    assert backend_pid() != pid  # no error: the check saw the socket and reconnected
    assert health_checks == ["default"]


def test_without_the_check_the_same_termination_fails_the_query(health_checks) -> None:
    connection.health_check_enabled = False  # until the next connect reads the setting
    pid = backend_pid()
    next_request()
    terminate(pid)
    with pytest.raises(OperationalError):
        backend_pid()
    next_request()  # Django drops the broken connection at the end of the request
    assert backend_pid() != pid


def test_a_message_nobody_asked_for_gets_the_full_check(health_checks) -> None:
    with connection.cursor() as cursor:
        cursor.execute("LISTEN health_check_test")
    pid = backend_pid()
    with raw_connection() as other:
        other.execute("NOTIFY health_check_test")
    readable, _, _ = select.select([connection.connection.fileno()], [], [], 5)
    assert readable, "the notification never reached the socket"
    next_request()
    assert backend_pid() == pid  # SELECT 1 passed: the same session is kept
    assert health_checks == ["default"]
    with connection.cursor() as cursor:
        cursor.execute("UNLISTEN *")


def test_sessions_run_without_jit_compilation() -> None:
    """The lag count would otherwise be compiled on a large feed (config/settings.py)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


def prepared() -> dict[str, int]:
    """This session's prepared statements: their text and how often each was planned."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def read_user(user_id: uuid.UUID) -> None:
    with pytest.raises(UserNotFound):
        selectors.user_detail(user_id)


def test_prepared_statements_are_on_by_default(settings) -> None:
    assert settings.DATABASES["default"]["OPTIONS"]["prepare_threshold"] == 5


def test_the_user_read_and_the_append_are_prepared_once_per_session() -> None:
    connection.close()  # a new session: nothing prepared yet
    for n in range(3):
        read_user(uuid.uuid4())
        store.append(f"noted-{uuid.uuid4()}", [Noted(text="x", n=n)])
    statements = prepared()
    reads = [count for text, count in statements.items() if 'FROM "users_user"' in text]
    appends = [count for text, count in statements.items() if "INSERT" in text]
    # One statement each, planned on every run but parsed once.
    assert reads == [3]
    assert appends == [3]


def test_the_projection_statements_are_prepared_once_per_session() -> None:
    """They asked for it all along; without prepare_threshold psycopg ignored them."""
    connection.close()
    now = datetime.now(UTC)
    for n in range(3):
        projections.load_rows([uuid.uuid4()])
        email = f"p{n}@example.com"
        projections.save_rows(
            [
                projections.UserRow(
                    uuid.uuid4(),
                    email,
                    version=0,
                    last_position=n + 1,
                    created_at=now,
                    updated_at=now,
                )
            ]
        )
    statements = prepared()
    assert sorted(count for text, count in statements.items() if "users_user" in text) == [3, 3]


def test_a_create_prepares_its_append_and_its_email_reservation_once_per_session() -> None:
    connection.close()
    for n in range(3):
        handlers.handle(CreateUser(email=f"prep{n}@example.com", first_name="A", last_name="B"))
    statements = prepared()
    reservations = [count for text, count in statements.items() if "email_reservation" in text]
    appends = [count for text, count in statements.items() if "INSERT INTO events" in text]
    assert reservations == [3]
    assert appends == [3]


def test_without_prepared_statements_nothing_is_prepared(monkeypatch) -> None:
    monkeypatch.delitem(connection.settings_dict["OPTIONS"], "prepare_threshold")
    connection.close()
    try:
        for _ in range(3):
            read_user(uuid.uuid4())
            store.append(f"noted-{uuid.uuid4()}", [Noted(text="x")])
        assert prepared() == {}
    finally:
        connection.close()  # the next test connects with the settings restored


def test_the_query_log_shows_a_prepared_read_with_its_values() -> None:
    user_id = uuid.uuid4()
    with CaptureQueriesContext(connection) as queries:
        read_user(user_id)
    assert len(queries) == 1
    assert user_id.hex in queries[0]["sql"]  # as psycopg writes a uuid literal
    assert "$1" not in queries[0]["sql"]


def test_the_prepared_read_gives_what_the_orm_gives() -> None:
    """Read in binary: the same values, datetimes in the same (UTC) time zone."""
    record = UserRecord.objects.create(
        id=uuid.uuid4(),
        email="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
        status="active",
        welcomed_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        version=2,
        last_position=7,
        created_at=datetime(2025, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    expected = UserRecord.objects.values(*selectors.USER_FIELDS).get(id=record.id)
    read = selectors.user_detail(record.id)
    assert read == expected
    assert list(read) == list(selectors.USER_FIELDS)
    for field in ("welcomed_at", "created_at", "updated_at"):
        assert read[field].tzinfo is expected[field].tzinfo, field
