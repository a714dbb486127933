"""Forgetting a person in an append-only store, on the real database (invariant 10).

Personal fields are sealed with the person's key; erasure destroys it and every derived
copy, so that a plain-SQL dump of the whole database holds nothing of them, before and
after a rebuild of the read models, while the events, their order and versions stay.
"""

from __future__ import annotations

import dataclasses
import uuid
from io import StringIO
from typing import Any

import msgspec
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from eventstore import key_rotation, personal, reads, store
from eventstore.errors import ConcurrencyError
from eventstore.types import ERASED, registry
from sagas.models import SagaInstance
from tests.conftest import settle
from tests.faults import drive_in_process
from tests.personal import held, pg_dump
from tests.unit.test_personal_data import EVENT_CLASSES, _event_strategy
from users import handlers
from users.commands import CreateUser, EraseUser, UpdateUser
from users.errors import UserIsErased
from users.handlers import CommandResult
from users.models import EmailReservation, IdempotentRequest, UserRecord

pytestmark = pytest.mark.django_db(transaction=True)

PERSONAL_FIELDS = ("email", "first_name", "last_name")


@pytest.fixture
def officer(transactional_db) -> Any:
    """Staff allowed to erase and export users (session login, as in a browser)."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_user(
        username="officer", password="officer-pass-123", is_staff=True
    )
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["erase_user", "export_user"])
    )
    client = APIClient()
    client.force_login(user)
    return client


def stored_rows(stream_id: str) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT event_type, data::text FROM events WHERE stream_id = %s ORDER BY version",
            [stream_id],
        )
        return cursor.fetchall()


# --- the store, through PostgreSQL -------------------------------------------------------


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(
        # jsonb cannot hold a NUL character in plain fields (sealed ones can: base64).
        st.sampled_from(EVENT_CLASSES)
        .flatmap(_event_strategy)
        .filter(lambda event: b"\\u0000" not in msgspec.json.encode(event)),
        min_size=1,
    )
)
@pytest.mark.slow
def test_every_event_type_round_trips_through_the_store(events: list[Any]) -> None:
    """Sealed on append, opened by every read: the stream, the lean load, the feed."""
    stream_id = f"roundtrip-{uuid.uuid4()}"
    result = store.append(stream_id, events)
    assert [e.data for e in reads.read_stream(stream_id)] == events
    assert [payload for _, payload in reads.load_stream_payloads(stream_id)] == events
    settle()  # the feed reads below the horizon
    after = reads.read_all(limit=10_000, categories=["roundtrip"]).events
    assert [e.data for e in after if e.stream_id == stream_id] == events
    assert result.version == len(events) - 1
    for (kind, text), event in zip(stored_rows(stream_id), events, strict=True):
        entry = registry.lookup(kind)
        for field in entry.personal:
            value = getattr(event, field)
            if value is not None and len(value) >= 8:
                assert value not in text


def test_without_the_key_the_fields_read_as_erased_and_the_events_stay() -> None:
    user = handlers.handle(CreateUser(email="kay@example.com", first_name="Kay", last_name="Oh"))
    stream_id = user.user.stream_id
    handlers.handle(UpdateUser(user_id=user.user.id, last_name="Ohm"))
    before = [(e.version, e.event_id, e.position) for e in reads.read_stream(stream_id)]
    personal.erase_subject(str(user.user.id))
    events = reads.read_stream(stream_id)
    assert [(e.version, e.event_id, e.position) for e in events] == before
    assert events[0].data.email == events[0].data.first_name == ERASED
    assert events[1].data.last_name == ERASED
    assert events[1].data.email is None
    assert personal.is_erased(str(user.user.id))
    with pytest.raises(UserIsErased):  # no new key for an erased person, ever
        handlers.handle(UpdateUser(user_id=user.user.id, first_name="Back"))


def _key_statement_runs() -> dict[str, int]:
    """How often this session ran each prepared statement on the keys table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ["%personal_keys%"],
        )
        rows = cursor.fetchall()
    runs: dict[str, int] = {}
    for text, n in rows:
        kind = "ensure" if "INSERT" in text else "select"
        runs[kind] = runs.get(kind, 0) + n
    return runs


def test_one_key_query_per_command_and_per_feed_page() -> None:
    connection.close()  # a session of its own: its prepared statements count from zero
    ids = [
        handlers.handle(CreateUser(email=f"page{i}@example.com", first_name="P", last_name="Q"))
        for i in range(5)
    ]
    assert _key_statement_runs() == {"ensure": 5}  # one per create, with the append
    settle()
    page = reads.read_all(limit=1000)
    assert len(page.events) == 5
    assert _key_statement_runs() == {"ensure": 5, "select": 1}  # five people, one query
    for result in ids:  # the load fetches the key; the append in the same scope reuses it
        handlers.handle(UpdateUser(user_id=result.user.id, first_name="R"))
    assert _key_statement_runs() == {"ensure": 5, "select": 6}


# --- erasure --------------------------------------------------------------------------


PAST = ["zorabelle.past.q7k2@example.com", "Zorabelle", "Quixmantle"]
NOW = ["zorawyn.now.x9p4@example.org", "Zorawyn", "Pextravorn"]


@pytest.mark.slow
def test_after_erasure_a_dump_of_the_whole_database_holds_nothing_of_the_person(
    api, officer
) -> None:
    email, first, last = PAST
    created = api.post(
        "/v1/users",
        {"email": email, "first_name": first, "last_name": last},
        format="json",
        HTTP_IDEMPOTENCY_KEY="create-zora",
    )
    assert created.status_code == 201
    user_id = created.json()["id"]
    changed = api.patch(
        f"/v1/users/{user_id}",
        {"email": NOW[0], "first_name": NOW[1], "last_name": NOW[2]},
        format="json",
    )
    assert changed.status_code == 200
    kept = api.post(
        "/v1/users",
        {"email": "keep.me.r5t1@example.net", "first_name": "Keepsake", "last_name": "Other"},
        format="json",
    ).json()
    drive_in_process()  # read model, welcome saga (its row copies the email), email sent
    before = pg_dump()
    # The dump sees plaintext where it is: the read model, the saga row, the stored response.
    assert held(before, PAST + NOW) == PAST + NOW

    erased = officer.post(f"/v1/users/{user_id}/erase")
    assert erased.status_code == 200, erased.content
    assert erased.json()["status"] == "erased"
    drive_in_process()
    for stage in ("after erasure", "after replay_projections --all"):
        dump = pg_dump()
        assert held(dump, PAST + NOW) == [], stage
        assert held(dump, ["keep.me.r5t1@example.net", "Keepsake"]) != [], stage
        row = UserRecord.objects.get(id=user_id)
        assert (row.status, row.email, row.first_name, row.last_name) == ("erased", "", "", "")
        assert UserRecord.objects.get(id=kept["id"]).email == "keep.me.r5t1@example.net"
        call_command("replay_projections", "--all", stdout=StringIO(), stderr=StringIO())

    events = reads.read_stream(f"user-{user_id}")
    assert [e.event_type for e in events][-1] == "UserErased"
    assert [e.version for e in events] == list(range(len(events)))
    assert not EmailReservation.objects.filter(user_id=user_id).exists()
    saga = SagaInstance.objects.get(correlation_key=user_id)
    assert "email" not in saga.data
    assert "first_name" not in saga.data
    # A repeat of the stored create is refused, never a second person.
    repeat = api.post(
        "/v1/users",
        {"email": email, "first_name": first, "last_name": last},
        format="json",
        HTTP_IDEMPOTENCY_KEY="create-zora",
    )
    assert repeat.status_code == 422
    assert IdempotentRequest.objects.get(key="create-zora").body == {
        "id": user_id,
        "status": "erased",
    }


def test_erasing_twice_changes_nothing_and_commands_are_refused(api, officer) -> None:
    body = {"email": "twice@example.com", "first_name": "T", "last_name": "W"}
    user_id = api.post("/v1/users", body, format="json").json()["id"]
    first = officer.post(f"/v1/users/{user_id}/erase").json()
    second = officer.post(f"/v1/users/{user_id}/erase").json()
    assert first["position"] is not None
    assert second["position"] is None
    assert second["version"] == first["version"]
    for response in (
        api.patch(f"/v1/users/{user_id}", {"first_name": "Again"}, format="json"),
        api.delete(f"/v1/users/{user_id}"),
    ):
        assert response.status_code == 409
        assert "erased" in response.json()["detail"]
    # Its email is free again: the reservation went with the person.
    assert api.post("/v1/users", body, format="json").status_code == 201


def test_an_erasure_racing_updates_leaves_nothing_and_nothing_after_it(threads) -> None:
    """Real concurrent connections: one eraser and six updaters per user, all at once.

    Each update commits before the erasure (and is unreadable after it) or is refused;
    none lands after UserErased, and none leaves a key, reservation or value behind.
    """
    tag = uuid.uuid4().hex[:8]
    values: list[str] = []
    for round_no in range(4):
        user_id = handlers.handle(
            CreateUser(email=f"racer{round_no}.{tag}@example.com", first_name="R", last_name="S")
        ).user.id
        emails = [f"race{round_no}-{i}.{tag}@example.com" for i in range(7)]
        names = [f"Racerin{round_no}x{i}{tag}" for i in range(7)]
        values += emails[1:] + names[1:]

        def work(i: int, user_id: uuid.UUID = user_id, emails=emails, names=names) -> Any:
            if i == 0:
                return handlers.handle(EraseUser(user_id=user_id))
            return handlers.handle(
                UpdateUser(user_id=user_id, email=emails[i], first_name=names[i])
            )

        results = threads(7, work)
        assert isinstance(results[0], CommandResult), results[0]
        for result in results[1:]:
            assert isinstance(result, (CommandResult, UserIsErased, ConcurrencyError)), result
        events = reads.read_stream(f"user-{user_id}")
        kinds = [e.event_type for e in events]
        assert kinds[-1] == "UserErased"
        assert kinds.count("UserErased") == 1
        assert kinds.count("UserUpdated") == sum(isinstance(r, CommandResult) for r in results[1:])
        for event in events:
            for field in PERSONAL_FIELDS:
                assert getattr(event.data, field, None) in (None, ERASED)
        assert not EmailReservation.objects.filter(user_id=user_id).exists()
    drive_in_process()
    assert held(pg_dump(), values) == []


def test_the_erase_command_and_its_refusals() -> None:
    user = handlers.handle(CreateUser(email="cmd@example.com", first_name="C", last_name="D"))
    out = StringIO()
    call_command("erase_user", str(user.user.id), "--noinput", "--wait", "0", stdout=out)
    assert f"user {user.user.id} erased" in out.getvalue()
    out = StringIO()
    call_command("erase_user", str(user.user.id), "--noinput", stdout=out)
    assert "erased already" in out.getvalue()
    with pytest.raises(CommandError, match="does not exist"):
        call_command("erase_user", str(uuid.uuid4()), "--noinput")
    with pytest.raises(CommandError, match="not a user id"):
        call_command("erase_user", "nope", "--noinput")


# --- master keys ------------------------------------------------------------------------


def test_master_key_rotation_rewraps_every_key_and_the_old_one_can_go() -> None:
    old = next(iter(personal.master_keys().ciphers))
    new_key = personal.generate_master_key()
    ids = [
        handlers.handle(
            CreateUser(email=f"rot{i}@example.com", first_name=f"Rot{i}", last_name="X")
        ).user.id
        for i in range(5)
    ]
    erased = ids.pop()
    handlers.handle(EraseUser(user_id=erased))
    both = [new_key, *settings.PERSONAL_DATA_MASTER_KEYS]
    with override_settings(PERSONAL_DATA_MASTER_KEYS=both):
        current = personal.master_keys().current
        assert current != old
        assert key_rotation.keys_by_master() == {old: 4}
        # New people get keys under the new master key before any rotation.
        extra = handlers.handle(
            CreateUser(email="rot-new@example.com", first_name="New", last_name="Y")
        ).user.id
        ids.append(extra)
        out = StringIO()
        call_command("rotate_master_key", "--batch-size", "2", stdout=out)
        assert "re-wrapped 4 person keys" in out.getvalue()
        assert key_rotation.keys_by_master() == {current: 5}
        assert key_rotation.rotate_master_key() == 0  # nothing left to do
    with override_settings(PERSONAL_DATA_MASTER_KEYS=[new_key]):  # the old key retired
        for user_id in ids:
            events = reads.read_stream(f"user-{user_id}")
            assert events[0].data.email.startswith("rot")
        assert personal.is_erased(str(erased))
    with (
        override_settings(PERSONAL_DATA_MASTER_KEYS=[settings.PERSONAL_DATA_MASTER_KEYS[0]]),
        pytest.raises(ImproperlyConfigured, match="not in PERSONAL_DATA_MASTER_KEYS"),
    ):
        reads.read_stream(f"user-{ids[0]}")


def test_a_missing_or_malformed_master_key_is_a_clear_error() -> None:
    with (
        override_settings(PERSONAL_DATA_MASTER_KEYS=[]),
        pytest.raises(ImproperlyConfigured, match="PERSONAL_DATA_MASTER_KEYS is not set"),
    ):
        handlers.handle(CreateUser(email="nokey@example.com", first_name="N", last_name="K"))
    with (
        override_settings(PERSONAL_DATA_MASTER_KEYS=["c2hvcnQ="]),
        pytest.raises(ImproperlyConfigured, match="not the base64 of 32 bytes"),
    ):
        handlers.handle(CreateUser(email="short@example.com", first_name="S", last_name="K"))


def test_the_email_reservation_holds_a_keyed_hash_not_the_address() -> None:
    handlers.handle(CreateUser(email="Hidden@Example.com", first_name="H", last_name="I"))
    (reservation,) = EmailReservation.objects.all()
    assert reservation.email_hash == personal.keyed_hash("hidden@example.com")
    assert "hidden" not in reservation.email_hash
    with override_settings(PERSONAL_DATA_HMAC_KEY="another-secret"):
        assert personal.keyed_hash("hidden@example.com") != reservation.email_hash


def test_records_are_plain_dataclasses_after_decoding() -> None:
    user = handlers.handle(CreateUser(email="dc@example.com", first_name="D", last_name="C"))
    (event,) = reads.read_stream(user.user.stream_id)
    assert dataclasses.asdict(event.data)["email"] == "dc@example.com"
