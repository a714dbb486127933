"""The users read model on real PostgreSQL: a rebuild equals the incremental build."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from eventstore import reads, replay, store, subscribers, subscriptions
from tests.conftest import settle
from users.events import UserCreated, UserDeleted, UserUpdated, UserWelcomed
from users.models import UserRecord
from users.projections import COLUMNS

pytestmark = pytest.mark.django_db(transaction=True)

WELCOMED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def histories() -> dict[uuid.UUID, list[object]]:
    """Users whose lives differ: long, deleted, welcomed early or late, barely begun."""
    ids = [uuid.uuid4() for _ in range(5)]
    long, deleted, welcomed, welcomed_deleted = ids[:4]  # the fifth is only created
    out: dict[uuid.UUID, list[object]] = {}
    for user_id in ids:
        n = ids.index(user_id)
        out[user_id] = [UserCreated(user_id=user_id, email=f"u{n}@example.com",
                                    first_name=f"First{n}", last_name=f"Last{n}")]  # fmt: skip
    for step in range(12):
        out[long].append(
            [
                UserUpdated(user_id=long, first_name=f"Renamed{step}"),
                UserUpdated(user_id=long, email=f"long.{step}@example.org"),
                UserUpdated(user_id=long, last_name=f"Changed{step}", first_name=f"Again{step}"),
            ][step % 3]
        )
    out[deleted] += [UserUpdated(user_id=deleted, last_name="Gone"), UserDeleted(user_id=deleted)]
    out[welcomed] += [
        UserWelcomed(user_id=welcomed, welcomed_at=WELCOMED_AT),
        *[UserUpdated(user_id=welcomed, email=f"w.{i}@example.org") for i in range(4)],
    ]
    out[welcomed_deleted] += [
        *[UserUpdated(user_id=welcomed_deleted, first_name=f"W{i}") for i in range(5)],
        UserWelcomed(user_id=welcomed_deleted, welcomed_at=WELCOMED_AT + timedelta(days=1)),
        UserDeleted(user_id=welcomed_deleted),
    ]
    return out


def append_interleaved(users: dict[uuid.UUID, list[object]]) -> None:
    """One event per user per round, one transaction each: every user spans many pages."""
    for round_ in range(max(len(events) for events in users.values())):
        for user_id, events in users.items():
            if round_ < len(events):
                store.append(f"user-{user_id}", [events[round_]])
    settle()


def rows() -> list[tuple]:
    return list(UserRecord.objects.order_by("id").values_list(*COLUMNS))


def test_the_fold_writes_every_column_of_the_model() -> None:
    assert tuple(field.column for field in UserRecord._meta.concrete_fields) == COLUMNS


def test_rebuild_equals_incremental_build_across_batch_boundaries(monkeypatch) -> None:
    users = histories()
    append_interleaved(users)
    projection = subscribers.get("users")
    monkeypatch.setattr(projection, "batch_size", 4)
    assert subscriptions.catch_up(projection).stopped == "caught_up"
    incremental = rows()

    assert len(incremental) == 5
    by_id = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in incremental}
    long, deleted, welcomed, welcomed_deleted, created_only = users
    assert by_id[long]["first_name"] == "Again11"
    assert by_id[long]["email"] == "long.10@example.org"
    assert by_id[long]["last_name"] == "Changed11"
    assert by_id[long]["version"] == 12
    assert (by_id[deleted]["status"], by_id[deleted]["last_name"]) == ("deleted", "Gone")
    assert by_id[welcomed]["welcomed_at"] == WELCOMED_AT
    assert by_id[welcomed]["email"] == "w.3@example.org"
    assert by_id[welcomed_deleted]["status"] == "deleted"
    assert by_id[welcomed_deleted]["welcomed_at"] == WELCOMED_AT + timedelta(days=1)
    assert by_id[created_only]["version"] == 0
    for user_id, row in by_id.items():
        stored = reads.read_stream(f"user-{user_id}")
        assert row["created_at"] == stored[0].recorded_at
        assert row["updated_at"] == stored[-1].recorded_at
        assert row["last_position"] == stored[-1].position

    with connection.cursor() as cursor:  # damage the read model; each rebuild repairs it
        cursor.execute("UPDATE users_user SET email = 'stale', version = 99")
        cursor.execute("DELETE FROM users_user WHERE id = %s", [created_only])
    for batch_size in (3, 5, 1000):  # pages that cut each history in different places
        result = replay.replay(projection, batch_size=batch_size)
        assert result.events == sum(len(events) for events in users.values())
        assert result.rows == {"users_user": 5}
        assert rows() == incremental
    assert subscriptions.catch_up(projection).processed == 0


def test_scratch_table_is_unlogged_and_keeps_only_unique_indexes() -> None:
    append_interleaved(histories())
    projection = subscribers.get("users")
    schema = replay.scratch_schema(projection)
    seen: list[tuple] = []

    def inspect(count: int) -> None:
        if seen:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relpersistence, c.reloptions, "
                "array(SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = c.oid "
                "ORDER BY 1) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = 'users_user'",
                [schema],
            )
            seen.append(cursor.fetchone())

    replay.replay(projection, batch_size=4, progress=inspect)
    persistence, options, indexes = seen[0]
    assert persistence == "u"
    assert options == ["fillfactor=70"]
    assert indexes == [f"{schema}.users_user_pkey"]
    with connection.cursor() as cursor:  # the live table keeps all of its own
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'users_user'")
        assert cursor.fetchone()[0] == 1 + len(UserRecord._meta.indexes)
