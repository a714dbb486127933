"""Partitioned subscribers: one subscriber moved by several workers, each stream in one."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from pathlib import Path

import pytest
from django.db import connection, connections

from eventstore import operations, partitions, reads, replay, store, subscribers, subscriptions
from eventstore.cursor import Cursor
from eventstore.models import Checkpoint
from tests.conftest import settle
from tests.events import Noted
from tests.integration.test_subscriptions import tallies, write
from tests.processes import celery_beat, celery_worker, child_env, wait_for
from tests.testapp.models import BatchLog, Switch, Tally

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tally(settings) -> subscribers.Subscriber:
    settings.SUBSCRIBER_PARTITIONS = {"test-tally": 4}
    return subscribers.get("test-tally")


def ordered() -> bool:
    """Every stream's events were tallied in version order (last_version == count - 1)."""
    return all(t.last_version == t.count - 1 for t in Tally.objects.all())


def test_python_and_postgresql_agree_on_every_stream_s_bucket() -> None:
    # Fixed ids: random ones miss one of the 32 buckets in about one run of twenty.
    rng = random.Random(19)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(200)]
    stream_ids = [f"tally-{i}" for i in ids] + ["user-ä€", "x-" + "z" * 150]
    for stream_id in stream_ids:
        store.append(stream_id, [Noted(text="b")])
    with connection.cursor() as cursor:
        cursor.execute("SELECT stream_id, bucket FROM events")
        stored = dict(cursor.fetchall())
    assert stored == {s: partitions.bucket_of(s) for s in stream_ids}
    assert len(set(stored.values())) == partitions.BUCKETS  # 200 streams reach every bucket


def test_each_partition_reads_its_own_streams_through_the_bucket_index(tally) -> None:
    write(40, 2)
    seen: dict[str, int] = {}
    for partition in subscribers.partitions_of(tally):
        page = reads.read_all(
            Cursor.start(), limit=1000, event_types=tally.event_types, buckets=partition.buckets
        )
        for event in page.events:
            assert seen.setdefault(event.stream_id, partition.number) == partition.number
            assert partitions.partition_of(event.stream_id, 4) == partition.number
        assert [e.cursor for e in page.events] == sorted(e.cursor for e in page.events)
    assert len(seen) == 40


def test_a_partition_s_feed_is_read_through_the_bucket_index_on_a_large_table(tally) -> None:
    with connection.cursor() as cursor:  # 20,000 events in 2,000 streams, then statistics
        cursor.execute(
            "INSERT INTO streams (stream_id, category, version) "
            "SELECT 'tally-' || s, 'tally', 9 FROM generate_series(0, 1999) s"
        )
        cursor.execute(
            "INSERT INTO events (stream_id, version, category, event_id, event_type, data, "
            "metadata, transaction_id) SELECT 'tally-' || (g % 2000), g / 2000, 'tally', "
            "gen_random_uuid(), 'test.Noted', '{\"text\": \"x\", \"n\": 0}', '{}', "
            "pg_current_xact_id() FROM generate_series(0, 19999) g"
        )
        cursor.execute("ANALYZE events")
    sql, params = reads.feed_query(
        Cursor.start(), 100, event_types=tally.event_types, buckets=partitions.buckets_of(1, 4)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Merge Append" in plan  # the buckets' ordered scans merged, no sort of them all
    assert plan.count("Index Scan using events_bucket_feed_idx") == 8, plan
    assert "Seq Scan" not in plan


@pytest.mark.slow
def test_partitions_racing_with_appenders_take_every_event_once_in_stream_order(
    tally, threads
) -> None:
    expected: dict[str, tuple[int, int]] = {}
    stop = threading.Event()

    def appender() -> None:
        try:
            while not stop.is_set() and len(expected) < 40:
                sid = f"tally-{uuid.uuid4()}"
                for i in range(5):
                    store.append(sid, [Noted(text="r", n=i)])
                expected[sid] = (5, 10)
        finally:
            connections.close_all()

    def work(i: int) -> None:
        if i == 0:
            appender()
            stop.set()
            return
        partition = subscribers.partitions_of(tally)[i % 4]
        while not stop.is_set():
            subscriptions.catch_up_partition(partition)

    threads(9, work)  # one appender, two threads on each of the four partitions
    settle()
    subscriptions.catch_up(tally)
    assert tallies() == expected
    assert ordered()
    rows = Checkpoint.objects.filter(name="test-tally")
    assert sorted(rows.values_list("partition", "partitions")) == [(p, 4) for p in range(4)]
    assert sum(r.events_processed for r in rows) == 200


def test_replay_of_a_partitioned_projection_equals_the_incremental_build(tally) -> None:
    write(30, 4)
    subscriptions.catch_up(tally)
    incremental = sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version"))
    Tally.objects.update(total=-1)
    assert replay.replay(tally, batch_size=7).events == 120
    assert sorted(Tally.objects.values_list("stream_id", "count", "total", "last_version")) == (
        incremental
    )
    assert Checkpoint.objects.filter(name="test-tally", partitions=4).count() == 4
    assert subscriptions.catch_up(tally).processed == 0


def test_a_changed_partition_count_waits_for_repartition_then_moves_on_exactly_once(
    settings,
) -> None:
    tally = subscribers.get("test-tally")
    first = write(20, 3)
    subscriptions.catch_up(tally)  # one partition, as configured
    assert Checkpoint.objects.filter(name="test-tally").count() == 1
    second = write(10, 2)

    settings.SUBSCRIBER_PARTITIONS = {"test-tally": 4}
    result = subscriptions.catch_up(tally)
    assert (result.processed, result.stopped) == (0, "partition_count_changed")  # no reshuffle
    assert operations.repartition(tally) == (1, 4)
    assert Checkpoint.objects.filter(name="test-tally", partitions=4).count() == 4
    third = write(10, 2)
    subscriptions.catch_up(tally)
    assert tallies() == {**first, **second, **third}
    assert ordered()
    assert operations.repartition(tally) == (4, 4)  # nothing to do

    settings.SUBSCRIBER_PARTITIONS = {"test-tally": 2}  # and back down
    assert operations.repartition(tally) == (4, 2)
    fourth = write(5, 2)
    subscriptions.catch_up(tally)
    assert tallies() == {**first, **second, **third, **fourth}


@pytest.mark.slow
def test_two_worker_processes_move_one_subscriber_together_and_survive_a_sigkill(
    tmp_path: Path, settings
) -> None:
    settings.SUBSCRIBER_PARTITIONS = {"test-tally": 4}
    Switch.objects.create(name="slow")
    env = child_env(
        SUBSCRIBER_PARTITIONS="test-tally=4",
        TALLY_SLOW_SECONDS="0.02",
        TALLY_LOG_BATCHES="1",
        TALLY_BATCH_SIZE="10",
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
    )
    streams = [f"tally-{uuid.uuid4()}" for _ in range(40)]
    for version in range(6):
        for stream_id in streams:
            store.append(stream_id, [Noted(text="slow", n=version)])
    settle()
    worker_a = celery_worker(env, tmp_path / "a.log", concurrency=2, queues="celery", name="a")
    worker_b = celery_worker(env, tmp_path / "b.log", concurrency=2, queues="celery", name="b")
    beat = celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    try:
        wait_for(
            lambda: BatchLog.objects.values("pid").distinct().count() >= 3,
            60,
            "pool processes of both workers to commit batches",
        )
        worker_a.kill()  # SIGKILL mid-batch: its partitions' locks end with its sessions
        wait_for(
            lambda: sum(t.count for t in Tally.objects.all()) == 240,
            90,
            "the surviving worker to take every partition",
        )
    finally:
        beat.stop()
        worker_b.stop()
    assert tallies() == dict.fromkeys(streams, (6, 15))
    assert ordered()
    batches = list(BatchLog.objects.values_list("pid", "started", "finished"))
    assert len({pid for pid, _, _ in batches}) >= 3  # pool processes of both workers
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(batches, 2)
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert overlapping, "no two processes ran batches of the subscriber at the same time"
