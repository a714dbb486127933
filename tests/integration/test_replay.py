"""Replay's read-ahead: a second connection reads the next page while one is written."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection, transaction

from eventstore import replay, store, subscribers, subscriptions
from eventstore.models import Checkpoint
from tests.conftest import settle
from tests.events import Noted
from tests.testapp.models import Tally

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tally() -> subscribers.Subscriber:
    return subscribers.get("test-tally")


def write(streams: int, per_stream: int) -> None:
    for s in range(streams):
        store.append(f"tally-{uuid.uuid4()}", [Noted(text="t", n=s + i) for i in range(per_stream)])
    settle()


def tallies() -> list[tuple]:
    return sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version"))


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "replay-reader"]


def backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'"
        )
        return cursor.fetchone()[0]


def test_reads_at_most_two_pages_ahead(tally, monkeypatch) -> None:
    write(30, 4)
    subscriptions.catch_up(tally)
    reads: list[int] = []  # pages read when each page is handled
    read = replay._read

    def counting_read(*args, **kwargs):
        page = read(*args, **kwargs)
        reads.append(len(page.events))
        return page

    handled: list[int] = []
    monkeypatch.setattr(replay, "_read", counting_read)
    replay.replay(tally, batch_size=10, progress=lambda n: handled.append(len(reads)))
    # when page i (0-based) is handled: pages 0..i, one handed over, one being read
    assert all(read_so_far <= i + 3 for i, read_so_far in enumerate(handled))
    assert sum(reads) == 120


def test_interrupted_replay_stops_its_reader_and_closes_its_connection(tally) -> None:
    write(20, 5)
    subscriptions.catch_up(tally)
    live = tallies()
    before = backends()
    pages = 0

    def interrupt(count: int) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay.replay(tally, batch_size=5, progress=interrupt)
    assert readers() == []
    deadline = time.monotonic() + 5  # a closed connection's backend exits a moment later
    while backends() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends() == before
    assert tallies() == live


def test_a_failing_read_ahead_surfaces_in_the_caller(tally, monkeypatch) -> None:
    write(10, 5)
    subscriptions.catch_up(tally)
    live = tallies()
    checkpoint = Checkpoint.objects.get(name="test-tally")
    read, calls = replay._read, []

    def failing_read(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise RuntimeError("feed read failed")
        return read(*args, **kwargs)

    monkeypatch.setattr(replay, "_read", failing_read)
    with pytest.raises(RuntimeError, match="feed read failed"):
        replay.replay(tally, batch_size=5)
    assert calls[2] == "replay-reader"
    assert readers() == []
    assert tallies() == live
    assert Checkpoint.objects.get(name="test-tally").cursor_position == checkpoint.cursor_position


def test_replay_inside_a_transaction_reads_in_line(tally, monkeypatch) -> None:
    write(12, 3)
    subscriptions.catch_up(tally)
    incremental = tallies()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE testapp_tally SET total = -1")
    threads: set[str] = set()
    read = replay._read

    def recording_read(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return read(*args, **kwargs)

    monkeypatch.setattr(replay, "_read", recording_read)
    with transaction.atomic():  # a second connection would not see what this one wrote
        result = replay.replay(tally, batch_size=5)
    assert threads == {threading.current_thread().name}
    assert result.events == 36
    assert tallies() == incremental
