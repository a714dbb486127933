"""The operators' management commands, end to end on the real database."""

from __future__ import annotations

import json
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from eventstore import store
from eventstore.models import Checkpoint, ParkedStream, SkippedEvent
from tests.conftest import settle
from tests.events import Noted
from tests.testapp.models import Switch, Tally

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def append_tallies(count: int) -> None:
    for i in range(count):
        store.append(f"tally-{uuid.uuid4()}", [Noted(text="c", n=i)])
    settle()


def test_run_subscribers_catches_up_the_named_ones() -> None:
    append_tallies(3)
    out, _ = run("run_subscribers", "test-tally")
    assert "test-tally: 3 events, caught_up" in out
    assert Tally.objects.count() == 3
    assert run("run_subscribers", "test-tally")[0] == ""  # nothing new: says nothing
    with pytest.raises(CommandError, match="no subscriber named 'nope'"):
        run("run_subscribers", "nope")


def test_run_subscribers_retry_now_handles_parked_streams() -> None:
    stream_id = f"tally-{uuid.uuid4()}"
    store.append(stream_id, [Noted(text="boom")])
    settle()
    Switch.objects.create(name="fail")
    assert "0 events, 1 stream(s) parked, caught_up" in run("run_subscribers", "test-tally")[0]
    assert ParkedStream.objects.filter(stream_id=stream_id).exists()
    Switch.objects.all().delete()
    out = run("run_subscribers", "test-tally", "--retry-now")[0]
    assert "test-tally: 1 parked stream(s) handled, 0 still parked" in out
    assert not ParkedStream.objects.exists()
    assert Tally.objects.get(stream_id=stream_id).count == 1


def test_projection_status_table_and_json() -> None:
    append_tallies(2)
    run("run_subscribers", "test-tally")
    append_tallies(3)
    out, _ = run("projection_status")
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["subscriber", "kind", "cursor", "lag"]
    tally_line = next(line for line in lines if line.startswith("test-tally"))
    checkpoint = Checkpoint.objects.get(name="test-tally")
    shown = f"{checkpoint.cursor_transaction_id} / {checkpoint.cursor_position}"
    assert shown in tally_line  # the cursor as the admin shows it, both parts
    assert tally_line.split()[1] == "projection"
    assert "cursor: where a partition is in the gap-safe feed" in out  # explained
    rows = {row["name"]: row for row in json.loads(run("projection_status", "--json")[0])}
    assert rows["test-tally"]["lag"] == 3
    assert rows["test-tally"]["events_processed"] == 2
    assert rows["test-tally"]["partition_rows"][0]["cursor"] == shown
    assert rows["test-tally"]["parked_streams"] == []
    assert rows["welcome-saga"]["kind"] == "process_manager"
    assert rows["users"]["kind"] == "projection"


def test_projection_status_shows_parked_streams_and_the_parked_command_operates_them() -> None:
    stream_id = f"tally-{uuid.uuid4()}"
    store.append(stream_id, [Noted(text="boom"), Noted(text="after", n=5)])
    settle()
    Switch.objects.create(name="fail")
    run("run_subscribers", "test-tally")
    out, _ = run("projection_status")
    tally_line = next(line for line in out.splitlines() if line.startswith("test-tally"))
    assert tally_line.split()[-1] == "parked"
    rows = {row["name"]: row for row in json.loads(run("projection_status", "--json")[0])}
    (parked,) = rows["test-tally"]["parked_streams"]
    assert parked["stream_id"] == stream_id
    assert parked["waiting_events"] == 2
    assert "RuntimeError: cannot tally" in parked["error"]

    listed = run("parked", "list", "test-tally")[0]
    assert stream_id in listed
    assert "2 event(s) wait" in listed
    with pytest.raises(CommandError, match="still parked"):
        run("parked", "retry", "test-tally", stream_id)
    with pytest.raises(CommandError, match="the following arguments are required: --reason"):
        run("parked", "skip", "test-tally", stream_id)
    out = run("parked", "skip", "test-tally", stream_id, "--reason", "test data", "--by", "ops")[0]
    assert f"{stream_id} is handled again" in out
    assert Tally.objects.get(stream_id=stream_id).total == 5  # the event after it counted
    skipped = SkippedEvent.objects.get()
    assert (skipped.reason, skipped.skipped_by, skipped.version) == ("test data", "ops", 0)
    with pytest.raises(CommandError, match="has not parked"):
        run("parked", "retry", "test-tally", stream_id)


def test_replay_projections_rebuilds_with_progress() -> None:
    append_tallies(5)
    run("run_subscribers", "test-tally")
    Tally.objects.update(total=-1)  # a damaged read model
    out, err = run("replay_projections", "test-tally", "--batch-size", "2")
    assert "test-tally: 5 events replayed (testapp_tally: 5 rows)" in out
    assert "5/5" in err  # the progress bar reached the end
    assert sorted(Tally.objects.values_list("total", flat=True)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name the projections"),
        (("welcome-saga",), "not a projection: welcome-saga"),
        (("nope",), "not a projection: nope"),
        (("test-tally", "--batch-size", "0"), "--batch-size"),
    ],
)
def test_replay_projections_refuses_bad_requests(args, message) -> None:
    with pytest.raises(CommandError, match=message):
        run("replay_projections", *args)


def test_replay_projections_refuses_a_second_concurrent_replay() -> None:
    import psycopg

    from eventstore.replay import REPLAY_LOCK_NAMESPACE, replay_lock_key
    from tests.processes import test_database_url

    lock = [REPLAY_LOCK_NAMESPACE, replay_lock_key("test-tally")]
    with psycopg.connect(test_database_url(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        with pytest.raises(CommandError, match="already running"):
            run("replay_projections", "test-tally")
