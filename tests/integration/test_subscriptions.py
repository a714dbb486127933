"""The subscription engine on real PostgreSQL: invariants 5 and 7, and error handling."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection, connections

from eventstore import operations, progress, replay, store, subscribers, subscriptions
from eventstore.models import Checkpoint, ParkedStream
from eventstore.subscribers import ProcessManager, handles
from tests.conftest import settle
from tests.events import Noted
from tests.processes import wait_for
from tests.testapp.models import Switch, Tally

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tally() -> subscribers.Subscriber:
    return subscribers.get("test-tally")


def write(stream_count: int, per_stream: int, text: str = "t") -> dict[str, tuple[int, int]]:
    """Append events; return the expected (count, total) per stream."""
    expected = {}
    for s in range(stream_count):
        sid = f"tally-{uuid.uuid4()}"
        store.append(sid, [Noted(text=text, n=s * 1000 + i) for i in range(per_stream)])
        expected[sid] = (per_stream, sum(s * 1000 + i for i in range(per_stream)))
    settle()
    return expected


def tallies() -> dict[str, tuple[int, int]]:
    return {t.stream_id: (t.count, t.total) for t in Tally.objects.all()}


def lag(subscriber: subscribers.Subscriber) -> int:
    return sum(progress.lag(p)[0] for p in subscribers.partitions_of(subscriber))


def test_catch_up_processes_everything_once(tally) -> None:
    expected = write(30, 12)  # 360 events, batch size 100
    result = subscriptions.catch_up(tally)
    assert (result.processed, result.stopped) == (360, "caught_up")
    assert result.batches >= 4
    assert tallies() == expected
    again = subscriptions.catch_up(tally)
    assert again.processed == 0
    assert tallies() == expected
    checkpoint = Checkpoint.objects.get(name="test-tally")
    assert checkpoint.events_processed == 360
    assert lag(tally) == 0


def test_racing_catch_ups_while_appending_are_exactly_once(tally, threads) -> None:
    expected: dict[str, tuple[int, int]] = {}
    stop = threading.Event()

    def appender() -> None:
        try:
            while not stop.is_set():
                expected.update(write(1, 5))
        finally:
            connections.close_all()

    def catcher(_: int) -> None:
        # At least five catch-ups each, and on until the appender has written a dozen
        # streams meanwhile: however fast a catch-up is, the two overlap. (A stuck
        # appender ends the loop after a minute and fails the count below.)
        give_up = time.monotonic() + 60
        rounds = 0
        while (rounds < 5 or len(expected) < 12) and time.monotonic() < give_up:
            subscriptions.catch_up(tally)
            rounds += 1

    writer = threading.Thread(target=appender)
    writer.start()
    try:
        outcomes = threads(6, catcher)
    finally:
        stop.set()
        writer.join()
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    subscriptions.catch_up(tally)
    assert len(expected) >= 12
    assert tallies() == expected


def test_a_failing_handler_parks_its_stream_and_the_rest_goes_on(tally) -> None:
    before = write(2, 3)
    bad_stream = f"tally-{uuid.uuid4()}"
    store.append(bad_stream, [Noted(text="ok", n=1)])
    boom = store.append(bad_stream, [Noted(text="boom", n=2)])
    store.append(bad_stream, [Noted(text="later", n=4)])  # waits behind the bad one
    after = write(2, 3)  # settles
    Switch.objects.create(name="fail")

    result = subscriptions.catch_up(tally)
    assert result.stopped == "caught_up"  # every other stream is done
    assert tallies() == {**before, bad_stream: (1, 1), **after}
    parked = ParkedStream.objects.get(subscriber="test-tally")
    assert (parked.stream_id, parked.cursor_position) == (bad_stream, boom.last_position)
    assert "RuntimeError: cannot tally" in parked.error
    assert parked.retry_at is not None  # retried automatically, with backoff
    assert lag(tally) == 0  # parked events are not lag: they are accounted for here

    # Still failing: the retry leaves it parked, at the same event, one attempt more.
    assert not operations.retry_parked("test-tally", bad_stream)
    parked.refresh_from_db()
    assert (parked.attempts, parked.cursor_position) == (2, boom.last_position)
    Switch.objects.all().delete()  # the fix is deployed
    assert operations.retry_parked("test-tally", bad_stream)
    assert tallies() == {**before, bad_stream: (3, 7), **after}
    assert not ParkedStream.objects.exists()
    store.append(bad_stream, [Noted(text="next", n=8)])  # the stream flows again
    settle()
    subscriptions.catch_up(tally)
    assert tallies()[bad_stream] == (4, 15)


def test_a_failing_subscriber_does_not_block_others(tally, monkeypatch) -> None:
    seen: list[int] = []

    class Counter(ProcessManager):
        name = "test-counter"

        @handles(Noted)
        def noted(self, event):
            seen.append(event.position)

    monkeypatch.setitem(subscribers._subscribers, "test-counter", Counter())
    store.append(f"tally-{uuid.uuid4()}", [Noted(text="boom"), Noted(text="after")])
    Switch.objects.create(name="fail")
    settle()
    results = subscriptions.catch_up_all()
    assert results["test-tally"].processed == 0
    assert ParkedStream.objects.filter(subscriber="test-tally").count() == 1
    assert not ParkedStream.objects.filter(subscriber="test-counter").exists()
    assert results["test-counter"].processed == 2
    assert len(seen) == 2


def in_slow_handler() -> bool:
    """Another session sits in a transaction right after the tally read its ``slow`` switch."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database() AND state = 'idle in transaction' "
            "AND query LIKE '%%testapp_switch%%'"
        )
        return cursor.fetchone()[0] > 0


def test_wake_up_while_the_holder_finishes_is_not_lost(tally) -> None:
    """An event committed while the running subscriber finishes its batch is processed
    by that run, although the wake-up it caused found the subscriber busy."""
    Switch.objects.create(name="slow")
    slow_stream = f"tally-{uuid.uuid4()}"
    store.append(slow_stream, [Noted(text="slow")])
    settle()
    outcome: dict[str, subscriptions.CatchUpResult] = {}

    def holder() -> None:
        try:
            outcome["holder"] = subscriptions.catch_up(tally)
        finally:
            connections.close_all()

    running = threading.Thread(target=holder)
    running.start()
    wait_for(in_slow_handler, 30, "the holder to be inside its slow batch, holding the lock")
    late_stream = f"tally-{uuid.uuid4()}"
    store.append(late_stream, [Noted(text="late", n=7)])
    settle()
    outcome["waker"] = subscriptions.catch_up(tally)  # what the wake-up task would do
    running.join()
    assert outcome["waker"].stopped == "busy"
    assert outcome["holder"].processed == 2
    assert tallies() == {slow_stream: (1, 0), late_stream: (1, 7)}


def test_read_your_writes_waits_for_the_position(tally, monkeypatch) -> None:
    result = store.append(f"tally-{uuid.uuid4()}", [Noted(text="x")])
    settle()
    subscriptions.ensure_checkpoints(tally)
    assert not progress.wait_until_processed(tally, result.last_position, timeout=0.05)
    checks = []
    state_of = progress.state_of
    monkeypatch.setattr(progress, "state_of", lambda *a: checks.append(1) or state_of(*a))
    answer = []

    def reader() -> None:
        answer.append(progress.wait_until_processed(tally, result.last_position, timeout=30))
        connections.close_all()

    waiting = threading.Thread(target=reader)
    waiting.start()
    wait_for(lambda: checks, 10, "the reader to find the position not yet processed")
    subscriptions.catch_up(tally)
    waiting.join()
    assert answer == [True]


class TestReplay:
    def test_replay_equals_incremental_build(self, tally) -> None:
        write(40, 7)
        subscriptions.catch_up(tally)
        incremental = sorted(
            Tally.objects.values_list("stream_id", "count", "total", "last_version")
        )
        with connection.cursor() as cursor:  # corrupt the read model; replay must repair it
            cursor.execute("UPDATE testapp_tally SET total = -1")
        result = replay.replay(tally, batch_size=50)
        assert result.events == 280
        assert result.rows == {"testapp_tally": 40}
        rebuilt = sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version"))
        assert rebuilt == incremental
        assert lag(tally) == 0
        assert subscriptions.catch_up(tally).processed == 0

    def test_readers_never_see_an_empty_or_partial_table(self, tally) -> None:
        write(60, 5)
        subscriptions.catch_up(tally)
        observed: list[int] = []
        done = threading.Event()

        def reader() -> None:
            try:
                with connections["default"].cursor() as cursor:
                    while not done.is_set():
                        cursor.execute("SELECT count(*), sum(count) FROM testapp_tally")
                        observed.append(tuple(cursor.fetchone()))
            finally:
                connections.close_all()

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            replay.replay(tally, batch_size=10)
        finally:
            done.set()
            thread.join()
        assert len(observed) > 10
        assert set(observed) == {(60, 300)}

    def test_events_appended_during_replay_are_included(self, tally) -> None:
        write(5, 5)
        subscriptions.catch_up(tally)
        extra: dict[str, tuple[int, int]] = {}

        def progress(count: int) -> None:
            if not extra:
                extra.update(write(3, 2))  # lands between the rebuild's batches

        replay.replay(tally, batch_size=5, progress=progress)
        assert len(tallies()) == 8
        assert all(tallies()[sid] == value for sid, value in extra.items())
        assert subscriptions.catch_up(tally).processed == 0

    def test_interrupted_replay_leaves_the_live_model_untouched(self, tally) -> None:
        write(10, 3)
        subscriptions.catch_up(tally)
        live = tallies()
        checkpoint = Checkpoint.objects.get(name="test-tally")

        def interrupt(count: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            replay.replay(tally, batch_size=5, progress=interrupt)
        assert tallies() == live
        after = Checkpoint.objects.get(name="test-tally")
        assert (after.cursor_transaction_id, after.cursor_position) == (
            checkpoint.cursor_transaction_id,
            checkpoint.cursor_position,
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regnamespace(%s)", [replay.scratch_schema(tally)])
            assert cursor.fetchone()[0] is None


def test_batches_commit_asynchronously_unless_the_subscriber_asks(tally, monkeypatch) -> None:
    """A batch and its checkpoint may skip the WAL flush (a crash redoes both); a
    subscriber with outside effects keeps durable commits."""
    seen: list[str] = []
    original = type(tally).handle_batch

    def spy(self, events) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            seen.append(cursor.fetchone()[0])
        original(self, events)

    monkeypatch.setattr(type(tally), "handle_batch", spy)
    write(1, 2)
    subscriptions.catch_up(tally)
    monkeypatch.setattr(type(tally), "synchronous_commit", True)
    write(1, 2)
    subscriptions.catch_up(tally)
    assert seen == ["off", "on"]
    with connection.cursor() as cursor:  # SET LOCAL: gone with the batch's transaction
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
