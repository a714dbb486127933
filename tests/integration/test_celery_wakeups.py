"""Subscribers driven by real Celery workers and a real Redis broker (invariants 5 and 6)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from celery.signals import task_postrun
from django.db import connection

from eventstore import subscribers, subscriptions
from eventstore.models import Checkpoint, Event
from eventstore.tasks import run_subscriber
from tests.integration.test_subscriptions import in_slow_handler, tallies, write
from tests.processes import (
    RedisServer,
    celery_beat,
    celery_worker,
    child_env,
    wait_for,
)
from tests.testapp.models import Switch
from tests.testapp.tasks import fail_after_a_query

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_appends_wake_the_projection_through_the_worker(celery_worker) -> None:
    expected = write(10, 4)
    wait_for(lambda: tallies() == expected, 20, "the worker to project every event")


@pytest.mark.slow
def test_duplicated_tasks_have_no_double_effect(celery_worker) -> None:
    finished: set[str] = set()

    def note(task_id: str, **_: object) -> None:
        finished.add(task_id)

    task_postrun.connect(note, weak=False)  # the worker runs in this process
    try:
        expected = write(20, 5)
        duplicates = {run_subscriber.delay("test-tally").id for _ in range(20)}
        expected.update(write(5, 5))
        wait_for(lambda: duplicates <= finished, 20, "every duplicate to have run")
        wait_for(lambda: tallies() == expected, 20, "the worker to project every event")
    finally:
        task_postrun.disconnect(note)
    assert tallies() == expected
    assert Checkpoint.objects.get(name="test-tally").events_processed == 125


@pytest.mark.slow
def test_worker_killed_mid_batch_leaves_a_correct_read_model(tmp_path) -> None:
    """SIGKILL a worker process in the middle of a batch, restart it: nothing doubled."""
    Switch.objects.create(name="slow")
    expected = write(8, 50, text="slow")  # 400 events; 100 per batch at 10 ms each
    env = child_env(TALLY_SLOW_SECONDS="0.01")
    worker = celery_worker(env, tmp_path / "worker1.log")
    try:
        subscriptions.ensure_checkpoints(subscribers.get("test-tally"))
        run_subscriber.delay("test-tally")
        wait_for(
            lambda: Checkpoint.objects.get(name="test-tally").events_processed >= 100,
            30,
            "the first batch to commit",
        )
        wait_for(in_slow_handler, 30, "the worker to be inside its next batch")
    finally:
        worker.kill()
    processed = Checkpoint.objects.get(name="test-tally").events_processed
    assert 100 <= processed < 400, worker.output()[-2000:]
    assert sum(count for count, _ in tallies().values()) == processed

    worker = celery_worker(env, tmp_path / "worker2.log")
    try:
        run_subscriber.delay("test-tally")
        wait_for(lambda: tallies() == expected, 60, "the restarted worker to finish")
    finally:
        worker.stop()
    assert Checkpoint.objects.get(name="test-tally").events_processed == 400


@pytest.mark.slow
def test_appends_while_redis_is_down_are_processed_when_it_returns(tmp_path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    env = child_env(REDIS_URL=redis.url, SUBSCRIBER_SAFETY_NET_SECONDS="1")
    worker = celery_worker(env, tmp_path / "worker.log")
    beat = celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    try:
        redis.stop()
        streams = [f"tally-{uuid.uuid4()}" for _ in range(5)]
        script = (
            "from eventstore import store\n"
            "from tests.events import Noted\n"
            f"for sid in {streams!r}:\n"
            "    store.append(sid, [Noted(text='offline', n=i) for i in range(3)])\n"
            "print('appended')\n"
        )
        appender = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert appender.returncode == 0, appender.stderr
        assert "appended" in appender.stdout
        assert "could not queue a wake-up for test-tally" in appender.stderr
        assert Event.objects.filter(stream_id__in=streams).count() == 15
        assert tallies() == {}

        redis.start()  # same port: the worker and beat reconnect
        expected = dict.fromkeys(streams, (3, 3))
        wait_for(lambda: tallies() == expected, 60, "the safety net to catch up")
    finally:
        beat.stop()
        worker.stop()
        redis.stop()


def broker_headers(queue: str = "celery") -> list[dict]:
    """The headers (task, argsrepr, eta...) of every message waiting in a broker queue
    (the default one unless named)."""
    import json

    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw)["headers"] for raw in client.lrange(queue, 0, -1)]


def broker_tasks(queue: str = "celery") -> list[tuple[str, str]]:
    """(task name, args) of every message waiting in a broker queue."""
    return [(h["task"], h["argsrepr"]) for h in broker_headers(queue)]


def test_waking_several_subscribers_queues_one_task_each(wake_sends) -> None:
    from django.core.cache import cache

    from eventstore import wakeups

    cache.clear()
    wakeups.wake([("test-tally", 0), ("users", 0)])
    assert wake_sends == [["test-tally"], ["users"]]  # a mark each
    assert sorted(broker_tasks()) == [
        ("eventstore.tasks.run_subscriber", "('test-tally',)"),
        ("eventstore.tasks.run_subscriber", "('users',)"),
    ]
    wakeups.wake([("test-tally", 0), ("users", 0)])  # both still queued: nothing more
    assert len(broker_tasks()) == 2
    wakeups.clear(wakeups.wake_key("users", 0))  # its task started
    wakeups.wake([("test-tally", 0), ("users", 0)])
    assert sorted(broker_tasks()).count(("eventstore.tasks.run_subscriber", "('users',)")) == 2
    assert len(broker_tasks()) == 3
    assert len(wake_sends) == 6


def test_a_burst_of_appends_queues_one_wake_up_per_subscriber() -> None:
    """No worker runs: whatever wakes the tally (appends, the safety net), one task waits."""
    from django.core.cache import cache

    from eventstore import wakeups
    from eventstore.tasks import wake_all_subscribers

    cache.clear()  # the broker's queue and the wake-up marks (same Redis database)
    write(10, 3)  # thirty appends, each waking the tally after its commit
    wake_all_subscribers()  # the safety net while a wake-up is queued
    wake = ("eventstore.tasks.run_subscriber", "('test-tally',)")
    assert broker_tasks().count(wake) == 1
    # A delayed re-check is queued apart: it neither blocks a fresh wake-up nor doubles.
    assert wakeups.recheck("test-tally", 0, 1, 5.0)
    assert not wakeups.recheck("test-tally", 0, 2, 5.0)
    wakeups.clear(wakeups.wake_key("test-tally", 0))  # what a starting task does
    write(1, 1)
    tasks = broker_tasks()
    assert tasks.count(wake) == 2
    assert tasks.count(("eventstore.tasks.run_subscriber", "('test-tally', 1)")) == 1


def _other_backends() -> set[int]:
    """Backend pids of the connections other clients hold to this database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in cursor.fetchall()}


def _broker_idle() -> bool:
    """Nothing queued and nothing running (tasks are acknowledged when they finish)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return client.llen("celery") == 0 and client.hlen("unacked") == 0


@pytest.mark.slow
def test_the_worker_keeps_its_connection_checked_and_drops_it_after_a_failure(tmp_path) -> None:
    """A task costs no new PostgreSQL connection; a broken or suspect one is replaced."""
    earlier = _other_backends()  # left open by earlier tests' threads, say

    def _worker_backends() -> list[int]:
        return sorted(_other_backends() - earlier)

    worker = celery_worker(child_env(), tmp_path / "worker.log")
    try:
        expected = write(3, 2)
        run_subscriber.delay("test-tally")
        wait_for(lambda: tallies() == expected, 30, "the first task")
        wait_for(lambda: len(_worker_backends()) == 1, 5, "the worker's connection")
        [kept] = _worker_backends()
        for _ in range(5):
            expected.update(write(1, 1))
            run_subscriber.delay("test-tally")
        wait_for(lambda: tallies() == expected, 30, "five more tasks")
        wait_for(_broker_idle, 30, "the worker to finish its tasks")
        assert _worker_backends() == [kept]  # reused, not reopened per task

        with connection.cursor() as cursor:  # the server drops it between two tasks
            cursor.execute("SELECT pg_terminate_backend(%s)", [kept])
        wait_for(lambda: _worker_backends() == [], 5, "the connection to go")
        expected.update(write(1, 1))
        run_subscriber.delay("test-tally")
        wait_for(lambda: tallies() == expected, 30, "a task on a fresh connection")
        [fresh] = _worker_backends()
        assert fresh != kept

        fail_after_a_query.delay()  # a failed task may leave it mid-query: not reused
        wait_for(lambda: "fails on purpose" in worker.output(), 30, "the failing task")
        wait_for(lambda: _worker_backends() == [], 5, "the failed task's connection to close")
        expected.update(write(1, 1))
        run_subscriber.delay("test-tally")
        wait_for(lambda: tallies() == expected, 30, "the next task")
    finally:
        worker.stop()
    log = worker.output()
    assert log.count("raised unexpected") == 1, log  # the deliberate failure only
