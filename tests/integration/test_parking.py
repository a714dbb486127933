"""A bad event stops one stream, not a subscriber: parking, retries, skips, and readers."""

from __future__ import annotations

import json
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from eventstore import operations, parking, replay, store, subscribers, subscriptions
from eventstore.models import ParkedStream, SkippedEvent
from tests.conftest import settle
from tests.events import Noted
from tests.integration.test_subscriptions import tallies, write
from tests.testapp.models import Switch, Tally
from users import handlers
from users.commands import CreateUser
from users.models import UserRecord

pytestmark = pytest.mark.django_db(transaction=True)


def append_raw(stream_id: str, event_type: str, data: dict) -> int:
    """Append an event straight to the table, as a buggy writer or a bad import would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE streams SET version = version + 1 WHERE stream_id = %s RETURNING version",
            [stream_id],
        )
        version = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO events (stream_id, version, category, event_id, event_type, data, "
            "metadata, transaction_id) VALUES (%s, %s, %s, %s, %s, %s, '{}', "
            "pg_current_xact_id()) RETURNING position",
            [stream_id, version, stream_id.split("-")[0], uuid.uuid4(), event_type,
             json.dumps(data)],
        )  # fmt: skip
        return cursor.fetchone()[0]


def create_user(n: int) -> uuid.UUID:
    result = handlers.handle(
        CreateUser(email=f"p{n}-{uuid.uuid4().hex[:6]}@example.com", first_name="P", last_name="Q")
    )
    return result.user.id


def test_an_undecodable_event_parks_its_user_and_everyone_else_is_projected() -> None:
    users = subscribers.get("users")
    broken = create_user(0)
    position = append_raw(f"user-{broken}", "UserUpdated", {"user_id": str(broken), "email": 42})
    later = [create_user(n) for n in range(1, 11)]
    settle()
    result = subscriptions.catch_up(users)
    assert (result.stopped, result.parked) == ("caught_up", 1)
    assert set(UserRecord.objects.values_list("id", flat=True)) == {broken, *later}
    parked = ParkedStream.objects.get(subscriber="users")
    assert (parked.stream_id, parked.cursor_position) == (f"user-{broken}", position)
    assert "EventDecodingError" in parked.error
    out = StringIO()
    call_command("projection_status", "--json", stdout=out)
    (entry,) = [e for e in json.loads(out.getvalue()) if e["name"] == "users"]
    assert entry["state"] == "parked"
    assert [p["stream_id"] for p in entry["parked_streams"]] == [f"user-{broken}"]
    assert entry["parked_streams"][0]["error"] == parked.error


def test_a_parked_stream_is_retried_automatically_then_left_to_an_operator(
    settings,
) -> None:
    tally = subscribers.get("test-tally")
    stream_id = f"tally-{uuid.uuid4()}"
    store.append(stream_id, [Noted(text="boom")])
    settle()
    Switch.objects.create(name="fail")
    subscriptions.catch_up(tally)
    for attempt in range(2, parking.AUTO_RETRIES + 2):
        ParkedStream.objects.update(retry_at=timezone.now())  # its backoff is over
        subscriptions.catch_up(tally)
        parked = ParkedStream.objects.get()
        assert parked.attempts == attempt
    assert parked.retry_at is None  # waits for an operator now
    ParkedStream.objects.filter(retry_at=None)  # and the engine leaves it alone:
    subscriptions.catch_up(tally)
    assert ParkedStream.objects.get().attempts == parking.AUTO_RETRIES + 1

    Switch.objects.all().delete()
    ParkedStream.objects.update(retry_at=timezone.now())
    subscriptions.catch_up(tally)  # an automatic retry after a fix unparks it too
    assert not ParkedStream.objects.exists()
    assert tallies() == {stream_id: (1, 0)}


def test_a_skipped_event_is_recorded_and_stays_skipped_in_a_replay_equal_to_the_live_build(
    settings,
) -> None:
    settings.SUBSCRIBER_PARTITIONS = {"test-tally": 2}
    tally = subscribers.get("test-tally")
    good = write(12, 3)
    bad = f"tally-{uuid.uuid4()}"
    store.append(bad, [Noted(text="a", n=1), Noted(text="boom", n=2), Noted(text="c", n=4)])
    undecodable = f"tally-{uuid.uuid4()}"
    store.append(undecodable, [Noted(text="x", n=1)])
    append_raw(undecodable, "test.Noted", {"text": "y", "n": "not a number"})
    settle()
    Switch.objects.create(name="fail")
    subscriptions.catch_up(tally)
    assert set(ParkedStream.objects.values_list("stream_id", flat=True)) == {bad, undecodable}
    assert tallies() == {**good, bad: (1, 1), undecodable: (1, 1)}

    assert operations.skip_parked("test-tally", bad, reason="known bad", actor="tests")
    assert tallies()[bad] == (2, 5)  # the event after the skipped one was handled
    assert SkippedEvent.objects.get().version == 1
    live = sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version"))

    Tally.objects.update(total=-1)
    replay.replay(tally, batch_size=5)
    rebuilt = sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version"))
    assert rebuilt == live  # the skip holds, and the undecodable stream parks again
    assert list(ParkedStream.objects.values_list("stream_id", flat=True)) == [undecodable]
    with pytest.raises(ValueError, match="reason"):
        operations.skip_parked("test-tally", undecodable, reason=" ", actor="tests")


def test_wait_for_on_a_parked_stream_answers_at_once_not_caught_up(api, monkeypatch) -> None:
    from eventstore import progress

    created = api.post(
        "/v1/users", {"email": "parked@example.com", "first_name": "P", "last_name": "K"},
        format="json",
    ).json()  # fmt: skip
    append_raw(f"user-{created['id']}", "UserUpdated", {"user_id": created["id"], "email": 7})
    settle()
    subscriptions.catch_up(subscribers.get("users"))
    assert ParkedStream.objects.filter(subscriber="users").exists()

    def no_waiting(seconds: float) -> None:
        raise AssertionError("waited on a parked stream")

    monkeypatch.setattr(progress.time, "sleep", no_waiting)
    response = api.get(f"/v1/users/{created['id']}?wait_for={created['position'] + 1}")
    assert response.status_code == 200
    assert response["Read-Model-Caught-Up"] == "false"
    fine = api.get(f"/v1/users/{created['id']}?wait_for={created['position']}")
    assert fine["Read-Model-Caught-Up"] == "true"  # before the bad event: it is there


def test_operators_retry_and_skip_in_the_admin(admin_client) -> None:
    stream_id = f"tally-{uuid.uuid4()}"
    store.append(stream_id, [Noted(text="boom"), Noted(text="fine", n=3)])
    settle()
    Switch.objects.create(name="fail")
    subscriptions.catch_up(subscribers.get("test-tally"))
    parked = ParkedStream.objects.get()

    page = admin_client.get("/admin/eventstore/checkpoint/")
    assert "1 parked stream" in page.content.decode()
    listing = admin_client.get("/admin/eventstore/parkedstream/?subscriber=test-tally")
    assert stream_id in listing.content.decode()
    assert "cannot tally" in listing.content.decode()

    action = {"action": "skip_first", "_selected_action": [parked.pk]}
    asked = admin_client.post("/admin/eventstore/parkedstream/", action)
    assert asked.status_code == 200
    assert "Skip the first waiting event" in asked.content.decode()
    assert ParkedStream.objects.exists()  # nothing happens before a reason is given
    done = admin_client.post(
        "/admin/eventstore/parkedstream/", {**action, "reason": "poison message"}, follow=True
    )
    assert "handled again" in done.content.decode()
    assert not ParkedStream.objects.exists()
    skipped = SkippedEvent.objects.get()
    assert (skipped.reason, skipped.skipped_by) == ("poison message", "admin (admin)")
    assert Tally.objects.get(stream_id=stream_id).total == 3
