"""Faults with real processes: PostgreSQL crashing, connections and statements killed,
Redis down, Celery workers SIGKILLed, requests cut off mid-transaction.

Each test ends with the same check (:mod:`tests.consistency`): every user stream replayed
equals its read-model row, one welcome and one email per user not deleted first, saga
states accordingly, every write a client was told succeeded stored where it was told;
lost 0, duplicated 0. ``FAULTS_SCALE=10`` makes every test ten times longer and harder
(more clients, crashes, kills): see docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
import requests
from django.db import connection, transaction

from eventstore import reads, store
from eventstore.models import Event, Stream
from eventstore.personal import keyed_hash
from sagas.models import SagaInstance
from tests.consistency import (
    UNCOMMITTED,
    Ack,
    check,
    emails_by_process,
    emails_in_dir,
    emails_in_outbox,
    wait_until_consistent,
    without_crash_window_copies,
)
from tests.e2e.helpers import assert_problem
from tests.faults import (
    SCALE,
    ApiLoad,
    Gunicorn,
    PrivatePostgres,
    api_token,
    consistency_in_child,
    drive_in_process,
    manage,
    phase,
    postgres_bin,
    scaled,
    write_acks,
)
from tests.processes import (
    RedisServer,
    celery_beat,
    celery_worker,
    child_env,
    wait_for,
)
from tests.processes import test_database_url as database_url
from users import handlers
from users.commands import CreateUser, DeleteUser, UpdateUser
from users.events import UserWelcomed
from users.models import EmailReservation, UserRecord

pytestmark = pytest.mark.django_db(transaction=True)

FILE_MAIL = "tests.faults.ProcessFileBackend"


def acked(load: ApiLoad) -> int:
    return sum(len(result.acks) for result in load.results)


def failed_with(load: ApiLoad, status: int) -> int:
    return sum(result.statuses[status] for result in load.results)


def create_user(email: str | None = None, **extra: Any) -> uuid.UUID:
    command = CreateUser(
        email=email or f"f{uuid.uuid4().hex[:10]}@example.com",
        first_name="Fa",
        last_name="Ult",
        **extra,
    )
    return handlers.handle(command).user.id


# --- the check itself must see what it is meant to see --------------------------------------


def test_the_consistency_check_finds_each_kind_of_damage() -> None:
    kept, gone = create_user(), create_user()
    handlers.handle(UpdateUser(user_id=kept, expected_version=None, last_name="Changed"))
    handlers.handle(DeleteUser(user_id=gone))  # before its welcome: the saga is cancelled
    drive_in_process()
    emails = emails_in_outbox()
    report = check(emails=emails)
    assert report.ok, report.problems
    assert (report.users, report.deleted, report.welcomes, len(emails)) == (2, 1, 1, 1)
    assert report.sagas == {"completed": 1, "cancelled": 1}

    assert check(emails=emails * 2).duplicated == 1
    assert check(emails=[]).lost == 1
    cancelled = str(SagaInstance.objects.get(status="cancelled").pk)
    assert check(emails=[*emails, cancelled]).duplicated == 1
    # Sent by a worker killed before its commit, then cancelled: the documented window.
    assert check(emails=[*emails, UNCOMMITTED + cancelled]).ok
    assert without_crash_window_copies([(cancelled, 7), (cancelled, 8)], {7, 8}) == (
        [UNCOMMITTED + cancelled],
        1,
    )
    bad_ack = Ack(f"user-{kept}", 7, 1)
    assert check(emails=emails, acknowledged=[bad_ack]).lost == 1

    row = UserRecord.objects.get(id=kept)
    UserRecord.objects.filter(id=kept).update(last_name="Tampered")
    assert check(emails=emails).mismatched == 1
    UserRecord.objects.filter(id=kept).delete()
    assert check(emails=emails).lost == 1
    row.save()
    assert check(emails=emails).ok

    Stream.objects.filter(stream_id=f"user-{kept}").update(version=9)
    assert check(emails=emails).mismatched == 1
    Stream.objects.filter(stream_id=f"user-{kept}").update(version=2)  # created, updated, welcomed

    SagaInstance.objects.filter(correlation_key=str(gone)).update(status="failed")
    assert check(emails=emails).mismatched == 1
    SagaInstance.objects.filter(correlation_key=str(gone)).update(status="cancelled")

    # A second welcome, written past the aggregate's rule: the check counts it.
    store.append(f"user-{kept}", [UserWelcomed(user_id=kept, welcomed_at=row.created_at)])
    drive_in_process()
    assert check(emails=emails).duplicated >= 1


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Any:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL server binaries to run a private server (set PG_BIN)")
    server = PrivatePostgres()
    try:
        server.create()
        yield server
    finally:
        server.destroy()


@pytest.mark.slow
def test_postgres_crash_while_clients_write(private_postgres, tmp_path) -> None:
    """The API answers 503 problem JSON while PostgreSQL is down and recovers by itself;
    creates retried with their Idempotency-Key make one user each; subscribers and sagas
    resume; nothing acknowledged is lost, nothing half-written survives crash recovery."""
    pg = private_postgres
    stack = contextlib.ExitStack()  # stops every process started below, however this ends
    redis = RedisServer(tmp_path)
    stack.callback(redis.stop)
    redis.start()
    mail = tmp_path / "mail"
    mail.mkdir()
    env = child_env(
        DATABASE_URL=pg.url,
        REDIS_URL=redis.url,
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
        EMAIL_BACKEND=FILE_MAIL,
        EMAIL_FILE_PATH=str(mail),
    )
    phase("private PostgreSQL up")
    with stack:
        manage(env, "migrate", "--verbosity", "0")
        token = api_token(env, "faults")
        auth = {"Authorization": f"Bearer {token}"}
        web = Gunicorn(env, tmp_path / "web.log")
        stack.callback(web.stop)
        stack.callback(celery_worker(env, tmp_path / "worker.log", concurrency=2).stop)
        stack.callback(celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule").stop)
        crashes = scaled(1)
        phase("service up")
        with ApiLoad(web.url, token, clients=4) as load:
            for _ in range(crashes):
                target = acked(load) + scaled(20)
                wait_for(lambda t=target: acked(load) >= t, 120, "writes before the crash")
                phase(f"crash at snapshot {pg.snapshot()}")
                pg.crash()
                failures = failed_with(load, 503) + 5
                wait_for(lambda f=failures: failed_with(load, 503) >= f, 60, "503s")
                ready = requests.get(f"{web.url}/ready", timeout=30)
                assert ready.status_code == 503
                assert ready.json()["database"].startswith("unreachable")
                during = requests.get(f"{web.url}/v1/users", headers=auth, timeout=30)
                assert during.status_code == 503
                assert during.headers["Content-Type"] == "application/problem+json"
                assert during.json()["status"] == 503
                time.sleep(1.0)  # the outage
                pg.start()  # crash recovery: uncommitted work of the crash is gone
                phase(f"restarted at snapshot {pg.snapshot()}")
            target = acked(load) + scaled(20)
            wait_for(lambda: acked(load) >= target, 120, "writes after the last restart")
        result = load.result()
        assert not result.unexpected, result.unexpected[:10]
        assert result.statuses[503] >= 5 * crashes
        assert requests.get(f"{web.url}/ready", timeout=30).status_code == 200

        phase(f"load stopped: {result.requests} requests, {dict(result.statuses)}")
        write_acks(tmp_path / "acks.jsonl", result.acks)
        report = consistency_in_child(
            env,
            "--wait", "120",
            "--email-dir", str(mail),
            "--acknowledged", str(tmp_path / "acks.jsonl"),
        )  # fmt: skip
        phase(f"checked: {report}")
        assert report["ok"], report["problems"]
        assert report["users"] == len(result.created)  # a retried create made one user
        assert report["acknowledged"] == len(result.acks) > 0
        assert (report["lost"], report["duplicated"], report["mismatched"]) == (0, 0, 0)
        assert report["emails"] == report["sagas"].get("completed", 0) > 0


@pytest.mark.slow
def test_connections_terminated_while_clients_write(tmp_path) -> None:
    """pg_terminate_backend on the service's connections at random moments: each request
    in flight fails with 503 and rolls back whole; the next one reconnects."""
    env = child_env(EMAIL_BACKEND=FILE_MAIL, EMAIL_FILE_PATH=str(tmp_path))
    from django.contrib.auth import get_user_model

    from users.authentication import issue_token

    user = get_user_model().objects.create_user(username="killer-test", password="x-pass-123")
    token = issue_token(user, "faults")[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    web = Gunicorn(env, tmp_path / "web.log", workers=2)
    killed = 0
    try:
        with (
            ApiLoad(web.url, token, clients=4) as load,
            psycopg.connect(database_url(), autocommit=True) as killer,
        ):
            rng = random.Random(7)
            deadline = time.monotonic() + 60 * SCALE
            while killed < scaled(40) and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.02, 0.15))
                rows = killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid() AND pid <> %s AND state <> 'idle'",
                    [own_pid],
                ).fetchall()
                killed += sum(1 for (done,) in rows if done)
            target = acked(load) + 10
            wait_for(lambda: acked(load) >= target, 60, "writes after the killing stopped")
    finally:
        web.stop()
    result = load.result()
    phase(f"{killed} connections killed: {result.requests} requests, {dict(result.statuses)}")
    assert killed >= scaled(40)
    assert not result.unexpected, result.unexpected[:10]
    assert result.statuses[503] > 0
    drive_in_process()
    report = check(emails=emails_in_outbox(), acknowledged=result.acks)
    assert report.ok, report.problems
    assert report.users == len(result.created)


@pytest.mark.slow
def test_feed_order_is_numeric_when_transaction_ids_gain_a_digit(private_postgres) -> None:
    """Found by the crash test: the feed sorted transaction ids as text, so 1000 came
    before 999, and subscribers folded streams out of order and lost updates. A fresh
    server's transaction ids pass 999 -> 1000 within its first few hundred transactions."""
    env = child_env(DATABASE_URL=private_postgres.url)
    manage(env, "migrate", "--verbosity", "0")
    script = (
        "from django.db import connection\n"
        "from eventstore import reads, store\n"
        "from tests.events import Noted\n"
        "def xid():\n"
        "    with connection.cursor() as cursor:\n"
        "        cursor.execute('SELECT pg_current_xact_id()::text')\n"
        "        return int(cursor.fetchone()[0])\n"
        "digits = len(str(xid()))\n"
        "for i in range(10):\n"
        "    store.append(f'tally-{i}', [Noted(text='before', n=i)])\n"
        "while len(str(xid())) == digits:\n"
        "    pass\n"
        "for i in range(10):\n"
        "    store.append(f'tally-{i}', [Noted(text='after', n=i)])\n"
        "page = reads.read_all(None, limit=15)\n"
        "rest = reads.read_all(page.next_cursor, limit=1000)\n"
        "xids = [e.cursor.transaction_id for e in page.events + rest.events]\n"
        "print(min(xids), max(xids), xids == sorted(xids), len(xids))\n"
    )
    low, high, ordered, count = manage(env, "shell", "-c", script).splitlines()[-1].split()
    assert len(low) < len(high)  # the events span ids of both lengths
    assert (ordered, count) == ("True", "20")  # in order, none skipped or read twice


def test_projection_follows_stream_order_when_a_saga_took_its_id_first(monkeypatch) -> None:
    """Found by the same run: the saga's step locks its row, which gives its transaction
    an id, before it appends UserWelcomed; an update committed meanwhile has a larger id
    but a smaller version, so the feed delivers that stream out of order. The read model
    must still end as the stream says."""
    from eventstore import subscribers, subscriptions
    from sagas import runner
    from tests.conftest import settle

    user_id = create_user()
    settle()
    subscriptions.catch_up(subscribers.get("welcome-saga"))  # the saga waits to welcome
    instance = SagaInstance.objects.get(correlation_key=str(user_id))
    paused, go = threading.Event(), threading.Event()
    load = handlers.repository.load

    def load_after_a_pause(aggregate_id: uuid.UUID) -> Any:
        if threading.current_thread().name == "saga-step":
            paused.set()
            assert go.wait(30)
        return load(aggregate_id)

    monkeypatch.setattr(handlers.repository, "load", load_after_a_pause)
    thread, out = _in_thread(lambda: runner.run(instance.pk), name="saga-step")
    assert paused.wait(30)  # the step holds its row lock: its transaction has an id
    handlers.handle(UpdateUser(user_id=user_id, expected_version=None, first_name="Later"))
    go.set()
    thread.join(30)
    assert not isinstance(out[0], Exception), out
    # Stored out of feed order (the step went on), or refused and retried by the saga in a
    # new transaction: either way the read model must end as the stream says.
    drive_in_process()
    _, updated, welcomed = reads.read_stream(f"user-{user_id}")
    assert (updated.event_type, welcomed.event_type) == ("UserUpdated", "UserWelcomed")
    phase(f"UserWelcomed before UserUpdated in the feed: {welcomed.cursor < updated.cursor}")
    row = UserRecord.objects.get(id=user_id)
    assert (row.first_name, row.version, row.welcomed_at) == ("Later", 2, welcomed.data.welcomed_at)
    assert check(emails=emails_in_outbox()).ok


# --- Redis --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_down_the_api_and_the_saga_keep_working(tmp_path) -> None:
    """With Redis stopped, every API write succeeds (rate limits fail open, wake-ups are
    skipped); nothing is projected or welcomed until Redis returns; then all of it is."""
    stack = contextlib.ExitStack()  # stops every process started below, however this ends
    redis = RedisServer(tmp_path)
    stack.callback(redis.stop)
    redis.start()
    mail = tmp_path / "mail"
    mail.mkdir()
    env = child_env(
        REDIS_URL=redis.url,
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
        EMAIL_BACKEND=FILE_MAIL,
        EMAIL_FILE_PATH=str(mail),
    )
    from django.contrib.auth import get_user_model

    from users.authentication import issue_token

    user = get_user_model().objects.create_user(username="redis-test", password="x-pass-123")
    token = issue_token(user, "faults")[1]
    with stack:
        web = Gunicorn(env, tmp_path / "web.log")
        stack.callback(web.stop)
        stack.callback(celery_worker(env, tmp_path / "worker.log", concurrency=2).stop)
        stack.callback(celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule").stop)
        redis.stop()
        phase("redis stopped")
        with ApiLoad(web.url, token, clients=3, expected=()) as load:
            wait_for(lambda: acked(load) >= scaled(30), 120, "writes with Redis down")
        result = load.result()
        assert not result.unexpected, result.unexpected[:10]
        assert result.connection_errors == 0
        assert not UserRecord.objects.exists()  # no wake-up got through, no beat either
        assert not SagaInstance.objects.exists()
        last = max(ack.position for ack in result.acks)
        read = requests.get(
            f"{web.url}/v1/users",
            params={"wait_for": last},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert read.status_code == 200
        assert read.headers["Read-Model-Caught-Up"] == "false"
        assert "could not queue a wake-up" in web.output()

        redis.start()  # same port: worker, beat and web reconnect
        phase(f"redis started again: {result.requests} requests, {dict(result.statuses)}")
        report = wait_until_consistent(
            180, emails=lambda: emails_in_dir(mail), acknowledged=result.acks
        )
        phase(f"consistent: {report.summary()}")
        assert report.users == len(result.created) > 0
        assert report.emails == report.sagas["completed"] > 0


# --- Celery workers -------------------------------------------------------------------------------


def _write_through_handlers(stop: threading.Event, index: int, acks: list[Ack]) -> None:
    """An in-process client of the handlers: create, update, sometimes delete."""
    rng = random.Random(index)
    mine: list[uuid.UUID] = []
    try:
        while not stop.is_set():
            result = handlers.handle(
                CreateUser(email=f"k{uuid.uuid4().hex}@example.com", first_name="K", last_name="L")
            )
            mine.append(result.user.id)
            acks.append(Ack(result.user.stream_id, result.version, result.position))
            if rng.random() < 0.5:
                result = handlers.handle(
                    UpdateUser(
                        user_id=rng.choice(mine),
                        expected_version=None,
                        first_name=f"N{rng.randrange(10**6)}",
                    )
                )
                if result.position is not None:
                    acks.append(Ack(result.user.stream_id, result.version, result.position))
            if rng.random() < 0.15:
                result = handlers.handle(DeleteUser(user_id=mine.pop(rng.randrange(len(mine)))))
                acks.append(Ack(result.user.stream_id, result.version, result.position))
            time.sleep(rng.uniform(0.1, 0.3))  # a steady load, not a flood the test waits out
    finally:
        connection.close()


@pytest.mark.slow
def test_worker_sigkilled_repeatedly_under_load(tmp_path) -> None:
    """SIGKILL the whole Celery worker (pool included) again and again while users are
    written; restart it each time. Read model and sagas end exactly right; an email is
    sent twice only through the documented window (sent, then killed before the commit)."""
    mail = tmp_path / "mail"
    mail.mkdir()
    env = child_env(
        SUBSCRIBER_SAFETY_NET_SECONDS="1", EMAIL_BACKEND=FILE_MAIL, EMAIL_FILE_PATH=str(mail)
    )
    beat = celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    stop = threading.Event()
    acks: list[Ack] = []
    writers = [
        threading.Thread(target=_write_through_handlers, args=(stop, i, acks)) for i in range(3)
    ]
    killed: set[int] = set()
    rng = random.Random(11)
    worker = None
    try:
        for writer in writers:
            writer.start()
        for round_ in range(scaled(5)):
            worker = celery_worker(env, tmp_path / f"worker{round_}.log", concurrency=2)
            wait_for(lambda w=worker: " ready." in w.output(), 60, "the worker to start")
            time.sleep(rng.uniform(0.3, 1.5))  # let it get into its work
            worker.kill()
            killed.add(worker.process.pid)
            phase(f"worker {worker.process.pid} killed")
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
        worker = celery_worker(env, tmp_path / "worker-final.log", concurrency=2)
        window = 0

        def emails() -> list[str]:
            nonlocal window
            kept, window = without_crash_window_copies(emails_by_process(mail), killed)
            return kept

        phase(f"writers stopped: {len(acks)} acknowledged writes")
        report = wait_until_consistent(180, emails=emails, acknowledged=acks)
    finally:
        stop.set()
        if worker is not None:
            worker.stop()
        beat.stop()
    assert report.users > 0
    assert report.emails == report.sagas["completed"] > 0
    assert window <= 2 * len(killed)  # at most one send in flight per pool process
    phase(f"{report.summary()}; {len(killed)} worker kills; crash-window emails {window}")


# --- requests cut off mid-transaction -----------------------------------------------------------


def _lock_waiter(timeout: float = 30) -> int:
    """The backend of this test database that waits for a lock (the blocked request)."""
    found: list[int] = []

    def waiting() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            found[:] = [row[0] for row in cursor.fetchall()]
        return len(found) == 1

    wait_for(waiting, timeout, "a request to block on the lock")
    return found[0]


def _holds_lock_on(pid: int, table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND relation = %s::regclass "
            "AND granted)",
            [pid, table],
        )
        return cursor.fetchone()[0]


class _Holder(threading.Thread):
    """Holds a lock in an open transaction (its own connection) until released, then rolls back."""

    def __init__(self, sql: str, params: list[Any]) -> None:
        super().__init__(daemon=True)
        self.sql, self.params = sql, params
        self.holding, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self.sql, self.params)
                self.holding.set()
                self.release.wait(60)
                transaction.set_rollback(True)
        finally:
            connection.close()

    def __enter__(self) -> _Holder:
        self.start()
        assert self.holding.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.join(30)


def _in_thread(work: Any, name: str | None = None) -> tuple[threading.Thread, list[Any]]:
    """Run ``work`` in a thread (its own connection); ``out`` gets its result or exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:
            out.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread, out


def _nothing_written(user_id: uuid.UUID) -> None:
    assert not Event.objects.filter(stream_id=f"user-{user_id}").exists()
    assert not Stream.objects.filter(stream_id=f"user-{user_id}").exists()
    assert not EmailReservation.objects.filter(user_id=user_id).exists()


def test_statement_cancelled_mid_create_writes_nothing(api) -> None:
    """The create has inserted its stream and event, then waits for the email's unique
    key; pg_cancel_backend stops it there. 503, and the inserted rows are gone with it."""
    user_id = uuid.uuid4()
    body = {"id": str(user_id), "email": "held@example.com", "first_name": "A", "last_name": "B"}
    held = "INSERT INTO users_email_reservation (email_hash, user_id) VALUES (%s, %s)"
    with _Holder(held, [keyed_hash("held@example.com"), uuid.uuid4()]):
        thread, out = _in_thread(lambda: api.post("/v1/users", body, format="json"))
        pid = _lock_waiter()
        assert _holds_lock_on(pid, "events")  # it did write into the events table
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(30)
    assert_problem(out[0], 503)
    _nothing_written(user_id)
    assert api.post("/v1/users", body, format="json").status_code == 201  # the retry works
    assert Event.objects.filter(stream_id=f"user-{user_id}").count() == 1
    drive_in_process()
    assert check(emails=emails_in_outbox()).ok


def test_connection_killed_mid_delete_writes_nothing(api) -> None:
    """The delete has removed the email reservation and waits for the stream row;
    pg_terminate_backend kills its connection. 503; the reservation is back, no event."""
    user_id = create_user("kept@example.com")
    held = "SELECT 1 FROM streams WHERE stream_id = %s FOR UPDATE"
    with _Holder(held, [f"user-{user_id}"]):
        thread, out = _in_thread(lambda: api.delete(f"/v1/users/{user_id}"))
        pid = _lock_waiter()
        assert _holds_lock_on(pid, "users_email_reservation")  # it deleted the reservation
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join(30)
    assert_problem(out[0], 503)
    assert reads.stream_version(f"user-{user_id}") == 0
    assert EmailReservation.objects.filter(
        user_id=user_id, email_hash=keyed_hash("kept@example.com")
    ).exists()
    thread, out = _in_thread(lambda: api.delete(f"/v1/users/{user_id}"))  # a new connection
    thread.join(30)
    assert out[0].status_code == 204
    drive_in_process()
    assert check(emails=emails_in_outbox()).ok


@pytest.mark.slow
def test_server_worker_killed_or_client_gone_mid_request(api, tmp_path) -> None:
    """Over real HTTP (gunicorn). A worker SIGKILLed while its request waits inside the
    transaction: nothing is written. A client that gives up waiting: the request may
    still commit, and the retry with the same Idempotency-Key returns that one user."""
    env = child_env(EMAIL_BACKEND=FILE_MAIL, EMAIL_FILE_PATH=str(tmp_path))
    web = Gunicorn(env, tmp_path / "web.log", workers=1)
    headers = {"Authorization": f"Bearer {api.token}"}
    held = "INSERT INTO users_email_reservation (email_hash, user_id) VALUES (%s, %s)"
    try:
        # 1. The server's worker dies mid-transaction.
        killed_id = uuid.uuid4()
        body = {"id": str(killed_id), "email": "w@example.com", "first_name": "A", "last_name": "B"}
        with _Holder(held, [keyed_hash("w@example.com"), uuid.uuid4()]):
            thread, out = _in_thread(
                lambda: requests.post(f"{web.url}/v1/users", json=body, headers=headers, timeout=60)
            )
            pid = _lock_waiter()
            for worker_pid in web.worker_pids():
                os.kill(worker_pid, signal.SIGKILL)
            thread.join(60)
        assert isinstance(out[0], requests.ConnectionError), out
        wait_for(lambda: not _backend_alive(pid), 30, "the dead worker's backend to end")
        _nothing_written(killed_id)
        wait_for(web._healthy, 60, "gunicorn to replace its worker")

        # 2. The client gives up while the request waits; the server carries on.
        user_id = uuid.uuid4()
        body = {"id": str(user_id), "email": "c@example.com", "first_name": "A", "last_name": "B"}
        key = {"Idempotency-Key": str(uuid.uuid4()), **headers}
        with _Holder(held, [keyed_hash("c@example.com"), uuid.uuid4()]):
            with pytest.raises(requests.Timeout):
                requests.post(f"{web.url}/v1/users", json=body, headers=key, timeout=(5, 1))
            _lock_waiter()
        retry = requests.post(f"{web.url}/v1/users", json=body, headers=key, timeout=60)
        assert retry.status_code == 201
        assert retry.json()["id"] == str(user_id)
        assert Event.objects.filter(stream_id=f"user-{user_id}").count() == 1
    finally:
        web.stop()
    drive_in_process()
    report = check(emails=emails_in_outbox())
    assert report.ok, report.problems
    assert report.users == 1


def _backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", [pid])
        return cursor.fetchone()[0]
