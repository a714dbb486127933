"""The event store against real PostgreSQL: design.md invariants 1-4 and 8."""

from __future__ import annotations

import random
import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, connections, transaction

from eventstore import reads, store
from eventstore.context import message_context
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventId,
    EventSerializationError,
    InvalidAppend,
    StreamNotFound,
    UnknownEventType,
)
from eventstore.models import Event, Stream
from eventstore.signals import events_appended
from eventstore.store import ANY, NO_STREAM, STREAM_EXISTS, NewEvent
from tests.conftest import settle
from tests.events import Noted, Priced, Renamed
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)


def new_stream() -> str:
    return f"test-{uuid.uuid4()}"


def versions(stream_id: str) -> list[int]:
    return list(
        Event.objects.filter(stream_id=stream_id)
        .order_by("version")
        .values_list("version", flat=True)
    )


def append_then_fail(stream_id: str) -> None:
    with transaction.atomic():
        store.append(stream_id, [Noted(text="doomed")], NO_STREAM)
        raise RuntimeError("the handler failed after appending")


class TestExpectedVersion:
    def test_no_stream_creates_and_then_refuses(self) -> None:
        sid = new_stream()
        result = store.append(sid, [Noted(text="a"), Noted(text="b")], NO_STREAM)
        assert result.version == 1
        assert len(result.positions) == 2
        with pytest.raises(ConcurrencyError) as caught:
            store.append(sid, [Noted(text="c")], NO_STREAM)
        assert caught.value.expected is NO_STREAM
        assert caught.value.actual == 1
        assert versions(sid) == [0, 1]

    def test_exact_version(self) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text="a")], NO_STREAM)
        assert store.append(sid, [Noted(text="b")], 0).version == 1
        with pytest.raises(ConcurrencyError) as caught:
            store.append(sid, [Noted(text="stale")], 0)
        assert (caught.value.expected, caught.value.actual) == (0, 1)
        with pytest.raises(ConcurrencyError) as caught:
            store.append(new_stream(), [Noted(text="x")], 3)
        assert caught.value.actual is None

    def test_stream_exists(self) -> None:
        sid = new_stream()
        with pytest.raises(ConcurrencyError) as caught:
            store.append(sid, [Noted(text="a")], STREAM_EXISTS)
        assert caught.value.actual is None
        assert not Stream.objects.filter(stream_id=sid).exists()
        store.append(sid, [Noted(text="a")])
        assert store.append(sid, [Noted(text="b")], STREAM_EXISTS).version == 1

    def test_any_creates_and_appends(self) -> None:
        sid = new_stream()
        assert store.append(sid, [Noted(text="a")], ANY).version == 0
        assert store.append(sid, [Noted(text="b"), Noted(text="c")], ANY).version == 2
        stream = Stream.objects.get(stream_id=sid)
        assert (stream.version, stream.category) == (2, "test")
        assert versions(sid) == [0, 1, 2]


class TestOptimisticLocking:
    def test_twenty_writers_at_one_version_exactly_one_wins(self, threads) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text="start")], NO_STREAM)

        def write(i: int) -> store.AppendResult:
            return store.append(sid, [Noted(text=f"w{i}", n=i), Noted(text="second", n=i)], 0)

        results = threads(20, write)
        winners = [r for r in results if isinstance(r, store.AppendResult)]
        losers = [r for r in results if isinstance(r, ConcurrencyError)]
        assert len(winners) == 1
        assert len(losers) == 19
        assert all(loser.expected == 0 and loser.actual == 2 for loser in losers)
        events = reads.read_stream(sid)
        assert [e.version for e in events] == [0, 1, 2]
        winner_index = results.index(winners[0])
        assert [e.data.n for e in events[1:]] == [winner_index, winner_index]
        assert Stream.objects.get(stream_id=sid).version == 2

    def test_twenty_writers_creating_one_stream(self, threads) -> None:
        sid = new_stream()
        results = threads(20, lambda i: store.append(sid, [Noted(text=f"{i}")], NO_STREAM))
        assert sum(isinstance(r, store.AppendResult) for r in results) == 1
        assert sum(isinstance(r, ConcurrencyError) for r in results) == 19
        assert versions(sid) == [0]

    def test_any_writers_never_conflict(self, threads) -> None:
        sid = new_stream()
        results = threads(10, lambda i: store.append(sid, [Noted(text=f"{i}")], ANY))
        assert all(isinstance(r, store.AppendResult) for r in results)
        assert versions(sid) == list(range(10))


class TestIdempotentAppend:
    def test_resend_at_the_same_place_writes_nothing(self) -> None:
        sid = new_stream()
        batch = [NewEvent(Noted(text="a")), NewEvent(Noted(text="b"))]
        first = store.append(sid, batch, NO_STREAM)
        again = store.append(sid, batch, NO_STREAM)
        assert again == first
        store.append(sid, [Noted(text="later")], 1)
        assert store.append(sid, batch, NO_STREAM) == first
        assert store.append(sid, batch, ANY) == first
        assert Event.objects.filter(stream_id=sid).count() == 3

    def test_resend_with_exact_version(self) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text="a")], NO_STREAM)
        batch = [NewEvent(Noted(text="b"))]
        first = store.append(sid, batch, 0)
        store.append(sid, [Noted(text="c")], 1)
        assert store.append(sid, batch, 0) == first
        with pytest.raises(DuplicateEventId):
            store.append(sid, batch, 2)

    def test_same_ids_elsewhere_is_an_error(self) -> None:
        sid, other = new_stream(), new_stream()
        batch = [NewEvent(Noted(text="a"))]
        store.append(sid, batch)
        with pytest.raises(DuplicateEventId) as caught:
            store.append(other, batch)
        assert caught.value.event_ids == [batch[0].event_id]
        assert not Stream.objects.filter(stream_id=other).exists()

    def test_partial_overlap_is_an_error_and_writes_nothing(self) -> None:
        sid = new_stream()
        stored = NewEvent(Noted(text="a"))
        store.append(sid, [stored], NO_STREAM)
        with pytest.raises(DuplicateEventId):
            store.append(sid, [NewEvent(Noted(text="new")), stored], ANY)
        assert versions(sid) == [0]
        assert Stream.objects.get(stream_id=sid).version == 0

    def test_in_a_transaction_only_a_possible_resend_takes_a_savepoint(self) -> None:
        """Payloads get new ids, so their append cannot meet stored ids: no savepoint (two
        round trips). Events with ids get one, so that a re-send whose ids the index
        refuses is told from a conflict and the transaction goes on."""
        from django.test.utils import CaptureQueriesContext

        sid = new_stream()
        resend = [NewEvent(Noted(text="b"))]
        with transaction.atomic(), CaptureQueriesContext(connection) as queries:
            store.append(sid, [Noted(text="a")], NO_STREAM)
            assert not [q for q in queries if q["sql"].startswith("SAVEPOINT")]
            first = store.append(sid, resend, ANY)
            assert store.append(sid, resend, ANY) == first  # the index refused it
            store.append(sid, [Noted(text="c")], ANY)  # and the transaction goes on
        assert [q["sql"].split()[0] for q in queries].count("SAVEPOINT") == 2
        assert versions(sid) == [0, 1, 2]

    @pytest.mark.parametrize("expected", [NO_STREAM, 5, STREAM_EXISTS])
    def test_a_conflict_of_payloads_in_a_transaction_leaves_it_usable(self, expected) -> None:
        """No savepoint, yet a refused append of payloads is no error in the transaction:
        the stream's version decides before anything is written."""
        sid = new_stream()
        store.append(sid, [Noted(text="a")], NO_STREAM)
        target = sid if expected is not STREAM_EXISTS else new_stream()
        with transaction.atomic():
            with pytest.raises(ConcurrencyError):
                store.append(target, [Noted(text="refused")], expected)
            store.append(sid, [Noted(text="b")], 0)  # the same transaction goes on
        assert versions(sid) == [0, 1]
        assert not Event.objects.filter(data__text="refused").exists()

    def test_concurrent_resends_write_once(self, threads) -> None:
        sid = new_stream()
        batch = [NewEvent(Noted(text="a")), NewEvent(Noted(text="b"))]
        results = threads(10, lambda i: store.append(sid, batch, NO_STREAM))
        assert all(isinstance(r, store.AppendResult) for r in results), results
        assert len({(r.version, tuple(r.positions)) for r in results}) == 1
        assert versions(sid) == [0, 1]


class TestAppendOnly:
    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE events SET event_type = 'tampered'",
            "DELETE FROM events",
            "DELETE FROM events WHERE false",
            "TRUNCATE events",
            "TRUNCATE events CASCADE",
            "TRUNCATE streams, events",
        ],
    )
    def test_trigger_rejects_changes_from_any_client(self, sql: str) -> None:
        store.append(new_stream(), [Noted(text="keep me")])
        before = Event.objects.count()
        with raw_connection() as raw, pytest.raises(psycopg.errors.RestrictViolation):
            raw.execute(sql)
        assert Event.objects.count() == before

    def test_orm_cannot_change_events(self) -> None:
        store.append(new_stream(), [Noted(text="keep me")])
        with pytest.raises(Exception, match="append-only"), transaction.atomic():
            Event.objects.all().update(event_type="x")
        with pytest.raises(Exception, match="append-only"), transaction.atomic():
            Event.objects.all().delete()
        assert Event.objects.filter(event_type="x").count() == 0


class TestBadInput:
    @pytest.mark.parametrize(
        "stream_id", ["", "user", "-abc", "user-", "user-a b", "us er-1", "user-\x00", None, 42]
    )
    def test_malformed_stream_id(self, stream_id: object) -> None:
        with pytest.raises(InvalidAppend, match="stream id"):
            store.append(stream_id, [Noted(text="a")])  # type: ignore[arg-type]
        assert Event.objects.count() == 0

    def test_empty_event_list(self) -> None:
        with pytest.raises(InvalidAppend, match="non-empty list"):
            store.append(new_stream(), [])

    def test_negative_expected_version(self) -> None:
        with pytest.raises(InvalidAppend, match="negative"):
            store.append(new_stream(), [Noted(text="a")], -1)

    def test_not_serialisable_payload_writes_nothing(self) -> None:
        sid = new_stream()
        with pytest.raises(EventSerializationError, match=r"test\.Noted"):
            store.append(sid, [Noted(text="ok"), Noted(text=object())])  # type: ignore[arg-type]
        assert not Stream.objects.filter(stream_id=sid).exists()

    def test_unregistered_event_class(self) -> None:
        class Stray:
            pass

        with pytest.raises(UnknownEventType, match="Stray"):
            store.append(new_stream(), [Stray()])

    def test_failure_in_the_middle_writes_nothing(self) -> None:
        taken = NewEvent(Noted(text="taken"))
        store.append(new_stream(), [taken])
        sid = new_stream()
        store.append(sid, [Noted(text="first")])
        with pytest.raises(DuplicateEventId):
            store.append(sid, [NewEvent(Noted(text="x")), taken, NewEvent(Noted(text="y"))], 0)
        assert versions(sid) == [0]
        assert Stream.objects.get(stream_id=sid).version == 0


class TestTransactions:
    def test_several_streams_in_one_transaction(self) -> None:
        a, b = new_stream(), new_stream()
        with transaction.atomic():
            store.append(a, [Noted(text="a")], NO_STREAM)
            store.append(b, [Noted(text="b")], NO_STREAM)
        assert versions(a) == versions(b) == [0]
        settle()
        feed = reads.read_all(limit=10).events
        assert {e.cursor.transaction_id for e in feed} == {feed[0].cursor.transaction_id}

    def test_outer_rollback_discards_everything(self) -> None:
        a = new_stream()
        with pytest.raises(RuntimeError):
            append_then_fail(a)
        assert not Stream.objects.filter(stream_id=a).exists()
        assert Event.objects.count() == 0

    def test_conflict_inside_outer_transaction_leaves_it_usable(self) -> None:
        a, b = new_stream(), new_stream()
        store.append(a, [Noted(text="a")])
        duplicate = NewEvent(Noted(text="dup"))
        store.append(b, [duplicate])
        with transaction.atomic():
            with pytest.raises(DuplicateEventId):
                store.append(a, [duplicate], 0)
            store.append(a, [Noted(text="still fine")], 0)
        assert versions(a) == [0, 1]

    def test_signal_fires_after_commit_only(self) -> None:
        received: list[str] = []

        def receiver(sender, stream_id, **kwargs):
            received.append(stream_id)

        events_appended.connect(receiver)
        try:
            a, b = new_stream(), new_stream()
            with transaction.atomic():
                store.append(a, [Noted(text="a")])
                assert received == []
            assert received == [a]
            with pytest.raises(RuntimeError):
                append_then_fail(b)
            assert received == [a]
        finally:
            events_appended.disconnect(receiver)


class TestReads:
    def test_stream_forwards_and_backwards(self) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text=str(i), n=i) for i in range(10)])
        assert [e.version for e in reads.read_stream(sid, from_version=3, limit=4)] == [3, 4, 5, 6]
        backwards = reads.read_stream(sid, from_version=5, backwards=True, limit=3)
        assert [e.version for e in backwards] == [5, 4, 3]
        assert [e.data.n for e in reads.read_stream(sid, backwards=True, limit=2)] == [9, 8]
        assert reads.read_stream(new_stream()) == []

    def test_category_feed_pages_with_cursor(self) -> None:
        for _ in range(3):
            store.append(new_stream(), [Noted(text="t")])
            store.append(f"other-{uuid.uuid4()}", [Noted(text="o")])
        settle()
        page = reads.read_category("test", limit=2)
        assert [e.category for e in page.events] == ["test", "test"]
        rest = reads.read_category("test", page.next_cursor, limit=10)
        assert len(rest.events) == 1
        assert rest.next_cursor >= rest.events[-1].cursor
        empty = reads.read_category("test", rest.next_cursor)
        assert empty.events == []
        assert empty.next_cursor >= rest.next_cursor
        newer = new_stream()
        store.append(newer, [Noted(text="new")])
        settle()
        after = reads.read_category("test", empty.next_cursor).events
        assert [e.stream_id for e in after] == [newer]

    def test_types_round_trip_and_upcast(self) -> None:
        sid = new_stream()
        item = uuid.uuid4()
        store.append(sid, [Priced(item=item, price=Decimal("19.90"))])
        assert reads.read_stream(sid)[0].data == Priced(item=item, price=Decimal("19.90"))
        with connection.cursor() as cursor:  # an event written before Renamed had v2
            cursor.execute(
                "INSERT INTO events (stream_id, version, category, event_id, event_type, "
                "schema_version, data, metadata) VALUES (%s, 1, 'test', %s, 'test.Renamed', 1, "
                "'{\"name\": \"Ada Lovelace\"}', '{}')",
                [sid, uuid.uuid4()],
            )
        assert reads.read_stream(sid)[1].data == Renamed(first_name="Ada", last_name="Lovelace")

    def test_unknown_stored_type_is_a_clear_error(self) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text="a")])
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO events (stream_id, version, category, event_id, event_type, "
                "data, metadata) VALUES (%s, 1, 'test', %s, 'test.Vanished', '{}', '{}')",
                [sid, uuid.uuid4()],
            )
        with pytest.raises(UnknownEventType, match=r"test\.Vanished"):
            reads.read_stream(sid)

    def test_load_missing_stream(self) -> None:
        with pytest.raises(StreamNotFound):
            reads.load_stream_payloads(new_stream())


class TestMetadata:
    def test_context_is_stamped_on_every_event(self) -> None:
        correlation, command = uuid.uuid4(), uuid.uuid4()
        sid = new_stream()
        with message_context(actor="user:alice", correlation_id=correlation, command_id=command):
            store.append(sid, [Noted(text="a"), Noted(text="b")])
        for event in reads.read_stream(sid):
            assert event.metadata["correlation_id"] == str(correlation)
            assert event.metadata["causation_id"] == str(command)
            assert event.metadata["command_id"] == str(command)
            assert event.metadata["actor"] == "user:alice"

    def test_events_without_context_are_their_own_root(self) -> None:
        sid = new_stream()
        store.append(sid, [Noted(text="a")])
        metadata = reads.read_stream(sid)[0].metadata
        assert metadata["actor"] == "system"
        assert metadata["correlation_id"] == metadata["causation_id"]


@pytest.mark.slow
def test_no_skipped_events_under_concurrent_out_of_order_commits() -> None:
    """8 writers, 5,000 events, random delays inside transactions, some streams shared;
    a follower sees each event once, and each stream's events in version order."""
    writers, total = 8, 5000
    per_writer = total // writers
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        rng = random.Random(index)
        # Some streams of its own, some shared by all writers (appended with ANY, so
        # writers queue on the stream row and commit in a different order than they began).
        streams = [f"gap{index}-{n}" for n in range(4)] + [f"gapshared-{n}" for n in range(3)]
        written = 0
        try:
            while written < per_writer:
                size = min(rng.randint(1, 4), per_writer - written)
                stream = rng.choice(streams)
                with transaction.atomic():
                    if rng.random() < 0.2:  # take a transaction id before appending
                        connection.cursor().execute("SELECT pg_current_xact_id()")
                    store.append(stream, [Noted(text="g", n=i) for i in range(size)])
                    if rng.random() < 0.3:
                        time.sleep(rng.uniform(0, 0.01))
                written += size
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    seen: list[reads.RecordedEvent] = []

    def follower() -> None:
        from django.db import connections

        cursor = None
        # Stop once every event is seen, or (to report what is missing) well after the
        # writers are done: the horizon may lag while some other transaction is open.
        deadline = None
        try:
            while len(seen) < total:
                if done.is_set() and deadline is None:
                    deadline = time.monotonic() + 60
                if deadline is not None and time.monotonic() > deadline:
                    return
                page = reads.read_all(cursor, limit=rng_limit())
                seen.extend(page.events)
                cursor = page.next_cursor
            extra = reads.read_all(cursor)  # nothing may come twice
            seen.extend(extra.events)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    limits = random.Random(99)

    def rng_limit() -> int:
        return limits.choice([1, 7, 50, 300])

    reader = threading.Thread(target=follower)
    reader.start()
    pool = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    done.set()
    reader.join(timeout=120)
    assert not errors, errors
    assert len(seen) == total == Event.objects.count()
    assert len({e.event_id for e in seen}) == total
    last_version: dict[str, int] = {}
    for event in seen:
        assert event.version == last_version.get(event.stream_id, -1) + 1
        last_version[event.stream_id] = event.version
    cursors = [e.cursor for e in seen]
    assert cursors == sorted(cursors)


def test_an_append_from_an_older_transaction_still_follows_its_predecessor(threads) -> None:
    """A transaction that took its id before another appended to the stream must not put
    its event ahead of that one in the feed."""
    sid = new_stream()
    store.append(sid, [Noted(text="v0")], NO_STREAM)
    took_id, appended = threading.Event(), threading.Event()

    def older() -> None:
        with transaction.atomic():
            connection.cursor().execute("SELECT pg_current_xact_id()")
            took_id.set()
            appended.wait(10)
            store.append(sid, [Noted(text="older")], 1)
        connections.close_all()

    def newer() -> None:
        took_id.wait(10)
        store.append(sid, [Noted(text="newer")], 0)
        appended.set()
        connections.close_all()

    results = threads(2, lambda i: older() if i == 0 else newer())
    assert results == [None, None]
    settle()
    feed = [e for e in reads.read_all(limit=100).events if e.stream_id == sid]
    assert [(e.version, e.data.text) for e in feed] == [(0, "v0"), (1, "newer"), (2, "older")]


def test_concurrent_any_appends_to_one_stream_stay_in_version_order(threads) -> None:
    sid = new_stream()
    results = threads(
        8, lambda i: [store.append(sid, [Noted(text=f"{i}-{k}")], ANY) for k in range(10)]
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    settle()
    feed = [e for e in reads.read_all(limit=1000).events if e.stream_id == sid]
    assert [e.version for e in feed] == list(range(80))
