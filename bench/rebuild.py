"""Rebuilding the users projection: our replay vs a bare read loop vs pyeventsourcing.

Run (one command, from the project root, about 11 minutes)::

    .venv/bin/python bench/rebuild.py

It needs the ``bench`` dependency group (``uv sync --frozen --all-groups``) and a
PostgreSQL server reachable as ``postgres://postgres@127.0.0.1:5432`` (trust auth; set
``BENCH_PG_URL`` for another server). It DROPS and recreates the database
``bench_rebuild`` at the start of every run, migrates it with ``manage.py migrate`` and
fills it, stage by stage, with 250,000, then 500,000, then 1,000,000 user events written
with bulk SQL in the shape ``eventstore.store.append`` writes them (a ``streams`` row
per user, events with ``pg_current_xact_id()``, JSON payloads and metadata, 10,000
events per committed transaction): per user one ``UserCreated``, then 2 to 6
``UserUpdated`` that arrive in later transactions, so the feed interleaves users as
real traffic does. The same events are copied, in the same order, into
pyeventsourcing's own table (schema ``peer``) in its own format (topic + JSON state), and
into a second database, ``bench_rebuild_enc``, as ``store.append`` writes them with
encryption on: email and names sealed with a key per user (its ``personal_keys`` rows
made on the way), the same transaction ids, positions and times.

At each stage the systems below rebuild from the first event, each in a fresh spawned
process (so its peak RSS is its own), in rounds that rotate the order; the what-if runs
at the largest stage only:

* ours           ``eventstore.replay.replay(subscribers.get("users"), batch_size=2000)``
                 as the working tree has it, to the end (it swaps the result in, and the
                 read model it built is compared with one computed from the events in SQL).
                 Its statements are timed by kind: those through Django's cursor (feed,
                 swap) with an execute wrapper, on the replay's reader thread too, the
                 projection's own binary statements (``users.projections.load_rows`` /
                 ``save_rows``) by wrapping those.
* ours_enc       the same replay on ``bench_rebuild_enc``: every event's personal fields
                 opened with its user's key (one key query per page of 2,000 events);
                 its read model is compared with the one the plaintext events dictate.
* ours_textsort  the same with the feed query's ``ORDER BY transaction_id, position`` of
                 267ee2b and before, which sorts the xids as text (see docs/benchmarks.md):
                 its pages cost time proportional to the events after the cursor, so it
                 runs for ``--budget`` seconds and the whole-rebuild time is estimated from
                 those pages. (If the tree has that query, ``ours`` is that one and
                 ``ours_feedfix`` measures the fix instead.)
* ceiling        a bare psycopg loop reading the same events in the same order, pages of
                 the same size (the store's feed statement, keyset on the feed index),
                 rows fetched, nothing decoded or written.
* peer           pyeventsourcing 9.5: ``ProjectionRunner`` with a ``PostgresTrackingRecorder``
                 subclass as the view: per event, one transaction with its tracking row and
                 one upsert (UserCreated) or update (UserUpdated) of a ``users`` table with
                 the same columns and indexes as ours, as its docs show. For ``--budget``
                 seconds (about 1,500 events/s: a whole 1M would take 11 minutes); its rate
                 leaves out its start-up.

Options: ``--sizes``, ``--batch-size``, ``--budget`` (10 s), ``--rounds`` (at the
largest size, default 2), ``--small-rounds`` (at the others, default 1), ``--systems``,
``--profile`` (also cProfile ``ours`` for ``--budget`` seconds on the smallest stage),
``--out`` and ``--chart``. Results go to ``bench/results/rebuild.json`` (gitignored),
the chart to ``docs/img/rebuild.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
DB = "bench_rebuild"
DB_ENC = "bench_rebuild_enc"  # the same events, personal fields encrypted
PEER_SCHEMA = "peer"
PEER_APP = "BenchUsers"  # pyeventsourcing names its table after the application
PEER_TABLE = f"{PEER_SCHEMA}.{PEER_APP.lower()}_events"
PEER_VIEW = "peerusers"  # the projection's name: tracking table peerusers_tracking
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ["DATABASE_URL"] = f"{PG_URL}/{DB}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/10")  # a replay never uses it
os.environ["DEBUG"] = "false"
os.environ.setdefault("DJANGO_ENV", "development")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# A master key for this run (the databases are dropped each run); children inherit it.
os.environ.setdefault("PERSONAL_DATA_MASTER_KEYS", base64.b64encode(os.urandom(32)).decode())
os.environ.setdefault("PERSONAL_DATA_HMAC_KEY", base64.b64encode(os.urandom(32)).decode())

SYSTEMS = ("ours", "ours_enc", "ours_textsort", "ours_feedfix", "ceiling", "peer")
LABELS = {
    "ours": "ours: replay() as in the tree",
    "ours_enc": "ours, personal fields encrypted",
    "ours_textsort": "ours, 267ee2b's feed ORDER BY (text sort; first 10 s)",
    "ours_feedfix": "what-if: feed ORDER BY fixed",
    "ceiling": "ceiling: bare psycopg read loop",
    "peer": "pyeventsourcing 9.5 ProjectionRunner",
}
COLORS = {
    "ours": "#1f77b4",
    "ours_enc": "#2ca02c",
    "ours_textsort": "#aec7e8",
    "ours_feedfix": "#9ecae1",
    "ceiling": "#7f7f7f",
    "peer": "#d62728",
}
CPUS = os.cpu_count() or 1
BLOCK = 2000  # users created per generation chunk; their updates land in later chunks
MAX_UPDATES = 6  # user i gets 2 + i % 5 updates: 4 on average, 5 events per user
FULL_RUN_LIMIT = 900.0  # seconds: a safety net for the systems that run to the end
_MEASURED = {"db": DB}  # the database whose backends a child's CPU figures count


def _pg_params(dbname: str = DB) -> dict[str, Any]:
    return common.pg_params(PG_URL, dbname)


def _connect(dbname: str = DB, **kwargs: Any) -> Any:
    return common.connect(PG_URL, dbname, **kwargs)


def _admin_sql(*statements: str) -> list:
    out = []
    with _connect("postgres", autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            out.append(cur.fetchall() if cur.description else None)
    return out


# --- the machine: CPU used by everything else while we measure -----------------------------


def _rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _activity() -> dict[str, Any]:
    rows = _admin_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        f"AND datname IS DISTINCT FROM '{DB}' AND pid <> pg_backend_pid()"
    )[0]
    pytest = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in {"pytest", "py.test"}:
                pytest += 1
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "other_active_pg_backends": rows[0][0],
        "pytest_processes": pytest,
    }


# --- generating the events ------------------------------------------------------------------

# One generation chunk c: the creates of block c, then update k of block c - k (k = 1..6,
# for the users that get that many), in that order, so consecutive feed positions belong
# to different users. OFFSET/LIMIT let a stage end on an exact event count; the rest of
# the chunk is written by the next stage. Users get a streams row at creation with the
# version their stream will reach; finish_stage() corrects the streams still in flight.
_GEN_SQL = f"""
WITH cand AS (
    SELECT k, i FROM (
        SELECT 0 AS k, i FROM generate_series(%(c)s * {BLOCK}, %(c)s * {BLOCK} + {BLOCK - 1}) AS i
        UNION ALL
        SELECT k, i FROM generate_series(1, {MAX_UPDATES}) AS k, LATERAL
             generate_series((%(c)s - k) * {BLOCK}, (%(c)s - k) * {BLOCK} + {BLOCK - 1}) AS i
        WHERE %(c)s - k >= 0 AND 2 + i %% 5 >= k
    ) s ORDER BY k, i OFFSET %(skip)s LIMIT %(limit)s
), r AS (
    SELECT k, i, md5('bench-user-' || i)::uuid AS uid, gen_random_uuid() AS cmd FROM cand
), ins AS (
    INSERT INTO events (stream_id, version, category, event_id, event_type, schema_version,
                        data, metadata, recorded_at, transaction_id)
    SELECT 'user-' || uid, k, 'user', gen_random_uuid(),
           CASE WHEN k = 0 THEN 'UserCreated' ELSE 'UserUpdated' END, 1,
           CASE WHEN k = 0 THEN jsonb_build_object(
                    'user_id', uid, 'email', 'user' || i || '@example.com',
                    'first_name', 'Firstname' || (i %% 997), 'last_name', 'Lastname' || (i %% 1009))
                WHEN k %% 3 = 1 THEN jsonb_build_object('user_id', uid, 'email', null,
                    'first_name', 'Renamed' || k || '-' || (i %% 991), 'last_name', null)
                WHEN k %% 3 = 2 THEN jsonb_build_object('user_id', uid, 'email', null,
                    'first_name', null, 'last_name', 'Changed' || k || '-' || (i %% 983))
                ELSE jsonb_build_object('user_id', uid,
                    'email', 'user' || i || '.v' || k || '@example.org',
                    'first_name', null, 'last_name', null) END,
           jsonb_build_object('correlation_id', cmd, 'causation_id', cmd,
                              'actor', 'user:bench', 'command_id', cmd),
           now(), pg_current_xact_id()
    FROM r ORDER BY k, i
    RETURNING 1
), st AS (
    INSERT INTO streams (stream_id, category, version, created_at, updated_at)
    SELECT 'user-' || uid, 'user', 2 + i %% 5, now(), now() FROM r WHERE k = 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM st)
"""

# pyeventsourcing's format: topic + the JSON its JSONTranscoder writes for the event's
# __dict__ (datetimes as {"_type_": "datetime_iso", ...}), versions counted from 1.
_PEER_COPY_SQL = f"""
INSERT INTO {PEER_TABLE} (originator_id, originator_version, topic, state)
SELECT (data->>'user_id')::uuid, version + 1,
       CASE event_type WHEN 'UserCreated' THEN 'bench_users:User.Created'
                       ELSE 'bench_users:User.Updated' END,
       convert_to(
           '{{"timestamp":{{"_type_":"datetime_iso","_data_":"'
           || to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00"}}'
           || CASE WHEN event_type = 'UserCreated'
                   THEN ',"originator_topic":"bench_users:User"' ELSE '' END
           || ',"email":' || coalesce(to_json(data->>'email')::text, 'null')
           || ',"first_name":' || coalesce(to_json(data->>'first_name')::text, 'null')
           || ',"last_name":' || coalesce(to_json(data->>'last_name')::text, 'null') || '}}',
           'UTF8')
FROM events
WHERE (transaction_id, position) > (%(xid)s::xid8, %(position)s)
ORDER BY transaction_id, position
"""


class Generator:
    """Writes the stages' events; remembers where the previous stage stopped."""

    CHUNK_EVENTS = 5 * BLOCK  # steady state: about 10,000 events per transaction

    def __init__(self) -> None:
        self.chunk = 0
        self.skip = 0
        self.total = 0
        self.copied_to = ("0", 0)  # feed cursor up to which the peer has the events
        self.sealed_to = ("0", 0)  # and up to which the encrypted copy has them

    def stage(self, target: int) -> dict[str, Any]:
        """Append events until the store holds ``target``; copy them to the peer."""
        before = self.total
        started = time.perf_counter()
        with _connect() as conn:
            conn.execute("SET synchronous_commit = off")  # bulk load: durability is moot
            while self.total < target:
                limit = min(target - self.total, self.CHUNK_EVENTS * 2)
                with conn.transaction():
                    written, _ = conn.execute(
                        _GEN_SQL, {"c": self.chunk, "skip": self.skip, "limit": limit}
                    ).fetchone()
                self.total += written
                if written < limit:
                    self.chunk, self.skip = self.chunk + 1, 0
                else:
                    self.skip += written
            generated = time.perf_counter() - started
            # Streams whose last events are still to come carry their final version:
            # set them to where their events are now.
            conn.execute(
                "UPDATE streams s SET version = m.v, updated_at = now() FROM ("
                "  SELECT stream_id, max(version) AS v FROM events GROUP BY stream_id"
                ") m WHERE s.stream_id = m.stream_id AND s.version <> m.v"
            )
            conn.commit()
            copy_started = time.perf_counter()
            with conn.transaction():
                conn.execute(
                    _PEER_COPY_SQL, {"xid": self.copied_to[0], "position": self.copied_to[1]}
                )
                self.copied_to = conn.execute(
                    "SELECT transaction_id::text, position FROM events "
                    "ORDER BY events.transaction_id DESC, events.position DESC LIMIT 1"
                ).fetchone()
            copied = time.perf_counter() - copy_started
        sealed_started = time.perf_counter()
        self.sealed_to = seal_copy(self.sealed_to)
        sealed = time.perf_counter() - sealed_started
        # Set hint bits and statistics now, so that no system pays for them in its run.
        with _connect(autocommit=True) as conn:
            for table in ("events", "streams", PEER_TABLE):
                conn.execute(f"VACUUM (ANALYZE) {table}")
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM streams), "
                f"(SELECT count(*) FROM {PEER_TABLE}), "
                "(SELECT count(*) FROM (SELECT originator_version AS v, lag(originator_version) "
                "OVER (PARTITION BY originator_id ORDER BY notification_id) AS prev "
                f"FROM {PEER_TABLE}) x WHERE prev <> v - 1),"
                " pg_size_pretty(pg_total_relation_size('events')), "
                f" pg_size_pretty(pg_total_relation_size('{PEER_TABLE}'))"
            ).fetchone()
        events, streams, peer_events, peer_out_of_order, size, peer_size = counts
        if events != target or peer_events != target or peer_out_of_order:
            raise RuntimeError(
                f"generation went wrong: {events} events, {peer_events} peer events "
                f"({peer_out_of_order} out of order), wanted {target}"
            )
        return {
            "events": events,
            "streams": streams,
            "generate_s": round(generated, 1),
            "events_per_s_written": round((target - before) / generated) if generated else None,
            "peer_copy_s": round(copied, 1),
            "encrypted_copy_s": round(sealed, 1),
            "events_table_size": size,
            "peer_table_size": peer_size,
        }


def prepare_database() -> None:
    for name in (DB, DB_ENC):
        _admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": f"{PG_URL}/{name}"},
            check=True,
        )
    with _connect(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {PEER_SCHEMA}")
    app = _peer_classes()["app"](env={**_peer_env(), "CREATE_TABLE": "y"})  # its events table
    app.close()


# --- the encrypted copy -------------------------------------------------------------------

_SEAL_PAGE = 10_000
_SOURCE_SQL = """
SELECT transaction_id::text, position, stream_id, version, category, event_id, event_type,
       schema_version, data::text, metadata::text, recorded_at
FROM events WHERE (transaction_id, position) > (%s::xid8, %s)
ORDER BY transaction_id, position LIMIT %s
"""
_COPY_SQL = (
    "COPY events (transaction_id, stream_id, version, category, event_id, event_type, "
    "schema_version, data, metadata, recorded_at) FROM STDIN"
)


def _seal_child(after: tuple[str, int], queue) -> None:
    """Copy the events after ``after`` into the encrypted database, sealed as append seals
    them (registry.encode with a key ring on that database), in feed order."""
    try:
        os.environ["DATABASE_URL"] = f"{PG_URL}/{DB_ENC}"
        import django

        django.setup()
        from django.db import connection, transaction

        from eventstore.personal import KeyRing
        from eventstore.types import registry

        copied = 0
        with _connect(autocommit=True) as source:
            while True:
                rows = source.execute(_SOURCE_SQL, [*after, _SEAL_PAGE]).fetchall()
                if not rows:
                    break
                payloads = [registry.decode(r[6], r[7], r[8]) for r in rows]
                with transaction.atomic(), connection.cursor() as cursor:
                    keys = KeyRing()
                    subjects = {registry.for_event(p).subject_of(p) for p in payloads}
                    keys.ensure(subjects - {None})
                    cursor.execute(  # versions are set once the stage is copied
                        "INSERT INTO streams (stream_id, category, version, created_at, "
                        "updated_at) SELECT DISTINCT s, 'user', 0, now(), now() "
                        "FROM unnest(%s::text[]) AS s ON CONFLICT (stream_id) DO NOTHING",
                        [[row[2] for row in rows]],
                    )
                    with cursor.cursor.copy(_COPY_SQL) as copy:
                        for row, payload in zip(rows, payloads, strict=True):
                            copy.write_row(
                                (row[0], *row[2:8], registry.encode(payload, keys)[1], *row[9:])
                            )
                copied += len(rows)
                after = (rows[-1][0], rows[-1][1])
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO streams (stream_id, category, version, created_at, updated_at) "
                "SELECT stream_id, min(category), max(version), now(), now() FROM events "
                "GROUP BY stream_id ON CONFLICT (stream_id) DO UPDATE SET version = "
                "EXCLUDED.version, updated_at = now()"
            )
            for table in ("events", "streams", "personal_keys"):
                cursor.execute(f"VACUUM (ANALYZE) {table}")
        queue.put({"after": after, "copied": copied})
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def seal_copy(after: tuple[str, int]) -> tuple[str, int]:
    """Bring the encrypted database up to the plaintext one; the new copy cursor."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_seal_child, args=(after, queue), daemon=True)
    proc.start()
    result = queue.get(timeout=FULL_RUN_LIMIT * 2)
    proc.join(timeout=60)
    if "error" in result:
        raise RuntimeError(f"the encrypted copy failed:\n{result['error']}")
    return result["after"]


# --- the peer: pyeventsourcing 9.5 ----------------------------------------------------------


def _peer_env() -> dict[str, str]:
    p = _pg_params()
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"],
        "POSTGRES_PORT": str(p["port"]),
        "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"],
        "POSTGRES_SCHEMA": PEER_SCHEMA,
    }


# The users table of the peer's view: the same columns and indexes as users_user.
_PEER_USERS_DDL = [
    f"CREATE TABLE IF NOT EXISTS {PEER_SCHEMA}.users (id uuid PRIMARY KEY, email text NOT NULL, "
    "first_name text NOT NULL, last_name text NOT NULL, status text NOT NULL, "
    "welcomed_at timestamptz, version integer NOT NULL, last_position bigint NOT NULL, "
    "created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS peer_users_email_idx ON {PEER_SCHEMA}.users (email)",
    f"CREATE INDEX IF NOT EXISTS peer_users_status_idx ON {PEER_SCHEMA}.users "
    "(status, created_at DESC)",
    f"CREATE INDEX IF NOT EXISTS peer_users_created_idx ON {PEER_SCHEMA}.users "
    "(created_at DESC, id)",
    f"CREATE INDEX IF NOT EXISTS peer_users_name_idx ON {PEER_SCHEMA}.users "
    "(last_name, first_name)",
]


def _peer_classes() -> dict[str, Any]:
    """The peer's aggregate, events, application, view and projection (one process)."""
    from eventsourcing.application import Application
    from eventsourcing.dispatch import singledispatchmethod
    from eventsourcing.domain import Aggregate
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection
    from eventsourcing.utils import register_topic
    from psycopg.sql import SQL

    class User(Aggregate):
        class Created(Aggregate.Created):
            email: str
            first_name: str
            last_name: str

        class Updated(Aggregate.Event):
            email: str | None
            first_name: str | None
            last_name: str | None

    register_topic("bench_users:User", User)
    register_topic("bench_users:User.Created", User.Created)
    register_topic("bench_users:User.Updated", User.Updated)

    class BenchUsers(Application):
        pass

    BenchUsers.name = PEER_APP

    upsert = SQL(
        f"INSERT INTO {PEER_SCHEMA}.users (id, email, first_name, last_name, status, version, "
        "last_position, created_at, updated_at) VALUES (%s, %s, %s, %s, 'active', %s, %s, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, first_name = EXCLUDED.first_name, "
        "last_name = EXCLUDED.last_name, status = EXCLUDED.status, version = EXCLUDED.version, "
        "last_position = EXCLUDED.last_position, updated_at = EXCLUDED.updated_at"
    )
    update = SQL(
        f"UPDATE {PEER_SCHEMA}.users SET email = coalesce(%s, email), "
        "first_name = coalesce(%s, first_name), last_name = coalesce(%s, last_name), "
        "version = %s, last_position = %s, updated_at = %s WHERE id = %s AND version < %s"
    )

    class PeerUsersView(PostgresTrackingRecorder):
        """The materialised view: users table + tracking table, written together."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sql_create_statements.extend(SQL(statement) for statement in _PEER_USERS_DDL)

        def created(self, event: Any, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)
                curs.execute(
                    upsert,
                    (
                        event.originator_id,
                        event.email,
                        event.first_name,
                        event.last_name,
                        event.originator_version - 1,
                        tracking.notification_id,
                        event.timestamp,
                        event.timestamp,
                    ),
                    prepare=True,
                )

        def updated(self, event: Any, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)
                curs.execute(
                    update,
                    (
                        event.email,
                        event.first_name,
                        event.last_name,
                        event.originator_version - 1,
                        tracking.notification_id,
                        event.timestamp,
                        event.originator_id,
                        event.originator_version - 1,
                    ),
                    prepare=True,
                )

    class PeerUsersProjection(Projection[PeerUsersView]):
        name = PEER_VIEW
        topics = ("bench_users:User.Created", "bench_users:User.Updated")

        @singledispatchmethod
        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            pass

        # Classes given explicitly: these annotations are strings (postponed evaluation)
        # naming classes local to this function.
        @process_event.register(User.Created)
        def _(self, domain_event: Any, tracking: Tracking) -> None:
            self.view.created(domain_event, tracking)

        @process_event.register(User.Updated)
        def _(self, domain_event: Any, tracking: Tracking) -> None:
            self.view.updated(domain_event, tracking)

    return {"app": BenchUsers, "view": PeerUsersView, "projection": PeerUsersProjection}


def _measure_peer(args: dict, total: int) -> dict[str, Any]:
    from eventsourcing.projection import ProjectionRunner

    probe = _connect(autocommit=True)
    probe.execute(f"DROP TABLE IF EXISTS {PEER_SCHEMA}.users, {PEER_SCHEMA}.{PEER_VIEW}_tracking")
    classes = _peer_classes()
    tracking_sql = (
        f"SELECT notification_id FROM {PEER_SCHEMA}.{PEER_VIEW}_tracking "
        "WHERE application_name = %s"
    )
    clock = time.perf_counter
    budget = args["budgets"]["peer"]
    marks = _marks_start(probe)
    start = clock()
    runner = ProjectionRunner(
        application_class=classes["app"],
        projection_class=classes["projection"],
        view_class=classes["view"],
        env=_peer_env(),
    )
    done, first = 0, None
    with runner:
        while True:
            time.sleep(0.1)
            with contextlib.suppress(Exception):  # the table appears when the runner starts
                row = probe.execute(tracking_sql, [PEER_APP]).fetchone()
                done = row[0] if row else 0
            elapsed = clock() - start
            if done and first is None:
                first = (elapsed, done)
            if done >= total or elapsed > budget or runner.is_interrupted.is_set():
                break
        marks = _marks_end(marks, probe)
        runner.stop()
    probe.close()
    # Its start-up (tables, type adapters, threads, first page) takes a second or more;
    # the rate used for ratios leaves it out, which can only flatter the peer.
    steady = None
    if first and elapsed > first[0]:
        steady = (done - first[1]) / (elapsed - first[0])
    return {
        **marks,
        "events": done,
        "seconds": elapsed,
        "complete": done >= total,
        "startup_s": round(first[0], 2) if first else None,
        "steady_events_per_s": round(steady, 1) if steady else None,
    }


# --- ours ---------------------------------------------------------------------------------

_FEED_ORDER_TEXT = "ORDER BY transaction_id, position"
_FEED_ORDER_FIXED = "ORDER BY events.transaction_id, events.position"


def _fixed_feed_sql(sql: str) -> str:
    """The store's feed statement with its ORDER BY naming the table's columns.

    Up to 267ee2b (fixed in 6859e90), ``ORDER BY transaction_id`` names the SELECT list's
    ``transaction_id::text`` (an output column wins over an input column in ORDER BY),
    so PostgreSQL sorts the xids as text ('100002' < '99998'), cannot walk the feed
    index in order, and reads and sorts every event after the cursor on every page.
    """
    return sql.replace(_FEED_ORDER_TEXT, _FEED_ORDER_FIXED)


def _text_sort_feed_sql(sql: str) -> str:
    """The feed statement as it was up to 267ee2b, whatever the working tree has."""
    return sql.replace(_FEED_ORDER_FIXED, _FEED_ORDER_TEXT)


def tree_feed_is_fixed() -> bool:
    from eventstore.store import _FEED_SQL  # the SQL text only; Django is not set up

    return _FEED_ORDER_TEXT not in _FEED_SQL


def _quadratic(system: str, tree_fixed: bool) -> bool:
    """Whether this system's feed pages cost time proportional to the events left."""
    return system == "ours_textsort" or (system == "ours" and not tree_fixed)


class _BudgetSpent(Exception):
    pass


def _estimate_full(
    total: int, batch: int, feed_times: list[float], pages: list[tuple[float, int]], within: float
) -> dict[str, Any] | None:
    """What a whole rebuild as committed would take, from its first ``within`` seconds.

    As committed, a feed page costs time proportional to the events after the cursor
    (the text sort reads all of them), so the first pages are the slowest. Model: page i
    costs c * r_i (r_i = events after its cursor, c fitted through the origin on the
    pages seen) plus a per-event cost h for everything else (decode, fold, write,
    commit), measured on the same pages. The 250k stage, rebuilt to the end, checks it.
    """
    seen = [p for p in pages if p[0] <= within] or pages[:1]
    if not seen or not feed_times:
        return None
    k = len(seen)
    feed = feed_times[:k]
    remaining = [max(0, total - i * batch) for i in range(len(feed))]
    c = sum(feed) / max(1, sum(remaining))
    h = (seen[-1][0] - sum(feed)) / max(1, seen[-1][1])
    n_pages = total // batch + 1
    feed_total = c * sum(max(0, total - i * batch) for i in range(n_pages))
    seconds = h * total + feed_total
    return {
        "from_first_s": round(seen[-1][0], 1),
        "pages_used": k,
        "feed_us_per_remaining_event": round(c * 1e6, 4),
        "other_us_per_event": round(h * 1e6, 1),
        "estimated_seconds": round(seconds, 1),
        "estimated_events_per_s": round(total / seconds, 1),
    }


def _statement_kind(sql: str) -> str:
    """Which part of a replay a statement run through Django's cursor belongs to."""
    if "pg_snapshot_xmin" in sql:
        return "feed read (store.read_all)"
    if 'FROM "replay_' in sql or sql.startswith("DELETE FROM"):
        return "swap into the live table"
    return "other"


def _time_projection_statements(statements: dict[str, list[float]]) -> None:
    """Time the users projection's own statements, which bypass Django's execute wrappers."""
    from users import projections

    for name, kind in (
        ("load_rows", "users_user read (rows of the batch, load_rows)"),
        ("save_rows", "users_user upsert (save_rows)"),
    ):
        function = getattr(projections, name)

        def timed(*args: Any, _function=function, _kind=kind) -> Any:
            started = time.perf_counter()
            try:
                return _function(*args)
            finally:
                entry = statements.setdefault(_kind, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        setattr(projections, name, timed)


def _measure_ours(system: str, args: dict, total: int) -> dict[str, Any]:
    import threading

    import django

    django.setup()
    from django.db import connection, connections

    from eventstore import replay, store, subscribers

    feed_fixed_in_store = _FEED_ORDER_TEXT not in store._FEED_SQL
    if system == "ours_feedfix":
        store._FEED_SQL = _fixed_feed_sql(store._FEED_SQL)
    elif system == "ours_textsort":
        store._FEED_SQL = _text_sort_feed_sql(store._FEED_SQL)
    projection = subscribers.get("users")
    statements: dict[str, list[float]] = {}
    feed_times: list[float] = []  # one per page, in order
    pages: list[tuple[float, int]] = []  # (seconds since start, events done) after each page
    _time_projection_statements(statements)
    tally = threading.Lock()  # the replay's reader thread times its statements too

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - started
            kind = _statement_kind(sql)
            with tally:
                entry = statements.setdefault(kind, [0, 0.0])
                entry[0] += 1
                entry[1] += took
                if kind.startswith("feed"):
                    feed_times.append(took)

    profiler = reader_profiler = None
    if args.get("profile"):
        import cProfile

        profiler, reader_profiler = cProfile.Profile(), cProfile.Profile()
    read = replay._read

    def read_in_reader_thread(*read_args: Any) -> Any:
        """Pages read ahead run on the reader thread's own connection: time them there.

        Its backend disconnects before the end of the run, so its CPU is noted here.
        """
        if threading.current_thread() is threading.main_thread():
            return read(*read_args)  # the tail, inside the swap: the main wrapper times it
        with connections["default"].execute_wrapper(timed):
            if reader_profiler:
                reader_profiler.enable()
            try:
                return read(*read_args)
            finally:
                if reader_profiler:
                    reader_profiler.disable()
                pid = connections["default"].connection.info.backend_pid
                if (used := common.cpu_seconds(pid)) is not None:
                    marks.setdefault("seen", {})[pid] = used

    replay._read = read_in_reader_thread

    monitor = _connect(autocommit=True)
    budget = args.get("budget_override") or args["budgets"].get(system, FULL_RUN_LIMIT)
    state = {"done": 0}
    clock = time.perf_counter

    def progress(count: int) -> None:
        state["done"] += count
        pages.append((clock() - start, state["done"]))
        if clock() - start > budget:
            raise _BudgetSpent

    marks = _marks_start(monitor)
    start = clock()
    complete = True
    rows = None
    try:
        with connection.execute_wrapper(timed):
            if profiler:
                profiler.enable()
            result = replay.replay(projection, batch_size=args["batch_size"], progress=progress)
            rows = result.rows
    except _BudgetSpent:
        complete = False
    finally:
        if profiler:
            profiler.disable()
    elapsed = clock() - start
    out = {
        **_marks_end(marks, monitor),
        "events": state["done"],
        "seconds": elapsed,
        "complete": complete,
        "rows": rows,
        "statements": {k: {"count": n, "seconds": round(s, 3)} for k, (n, s) in statements.items()},
        "tree_feed_order_by_fixed": feed_fixed_in_store,
        "feed_page_seconds_first": [round(t, 4) for t in feed_times[:5]],
        "feed_page_seconds_last": [round(t, 4) for t in feed_times[-5:]],
    }
    if _quadratic(system, feed_fixed_in_store):
        out["full_rebuild_estimate"] = _estimate_full(
            total, args["batch_size"], feed_times, pages, args["estimate_from"]
        )
    if profiler:
        out["profile"] = _profile_summary(profiler, reader_profiler)
    return out


def _profile_summary(*profilers) -> dict[str, Any]:
    """Top functions by own time, and totals for the places the time goes.

    The profiles of the main thread and of the replay's reader thread are added up, so
    the totals can exceed the wall time they were taken in.
    """
    import pstats

    stats = pstats.Stats(*profilers)
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append((tottime, cumtime, calls, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)

    def cumulative(path: str, function: str) -> float:
        hits = [r[1] for r in rows if path in r[3] and r[3].endswith(f"({function})")]
        return round(max(hits, default=0.0), 2)

    return {
        "total_s": round(total, 2),
        "top_own_time": [
            {"function": f, "own_s": round(t, 3), "cum_s": round(c, 3), "calls": n}
            for t, c, n, f in rows[:25]
        ],
        "cumulative_s": {
            "replay.rebuild": cumulative("eventstore/replay.py", "rebuild"),
            "UserListProjection.handle_batch": cumulative("users/projections.py", "handle_batch"),
            "load_rows (the batch's rows, binary SELECT)": cumulative(
                "users/projections.py", "load_rows"
            ),
            "save_rows (binary unnest upsert)": cumulative("users/projections.py", "save_rows"),
            "psycopg parameter dumping (arrays)": cumulative("psycopg/_queries.py", "dump"),
            "store.read_all (feed page + decode)": cumulative("eventstore/store.py", "read_all"),
            "store._decode (events to dataclasses)": cumulative("eventstore/store.py", "_decode"),
            "psycopg client-side query conversion": cumulative(
                "psycopg/_cursor_base.py", "_convert_query"
            ),
            "waiting for PostgreSQL (psycopg wait)": cumulative("psycopg/connection.py", "wait"),
        },
    }


def _measure_ceiling(args: dict, total: int) -> dict[str, Any]:
    from eventstore.store import _FEED_SQL  # the SQL text only; Django is not set up

    sql = _fixed_feed_sql(_FEED_SQL).replace("{filters}", "AND event_type = ANY(%(event_types)s)")
    types = ["UserCreated", "UserDeleted", "UserUpdated", "UserWelcomed"]  # the projection's
    conn = _connect(autocommit=True)
    monitor = _connect(autocommit=True)
    cur = conn.cursor()
    marks = _marks_start(monitor)
    clock = time.perf_counter
    start = clock()
    xid, position, done = "0", 0, 0
    while True:
        cur.execute(
            sql,
            {"xid": xid, "position": position, "limit": args["batch_size"], "event_types": types},
        )
        rows = [row for row in cur.fetchall() if row[1] is not None]
        done += len(rows)
        if len(rows) < args["batch_size"]:
            break
        xid, position = rows[-1][2], rows[-1][1]
    elapsed = clock() - start
    marks = _marks_end(marks, monitor)
    conn.close()
    return {**marks, "events": done, "seconds": elapsed, "complete": True}


# --- measuring in a fresh process -----------------------------------------------------------


def _backend_cpu(monitor) -> dict[int, float]:
    """CPU seconds of every backend connected to the bench database (but the monitor's)."""
    pids = monitor.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [_MEASURED["db"]],
    ).fetchall()
    out = {}
    for (pid,) in pids:
        cpu = common.cpu_seconds(pid)
        if cpu is not None:
            out[pid] = cpu
    return out


def _marks_start(monitor) -> dict[str, Any]:
    return {
        "rss_start_kb": _rss_kb(),
        "maxrss_before_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu": common.cpu_seconds(),
        "backends": _backend_cpu(monitor),
        "machine": common.machine_busy(),
        "wall": time.perf_counter(),
        "load": os.getloadavg()[0],
    }


def _marks_end(marks: dict[str, Any], monitor) -> dict[str, Any]:
    """Call before the measured connections close (their backends' CPU is read here).

    A backend that left earlier (the replay's reader connection) counts with the CPU
    noted in ``marks["seen"]`` by pid.
    """
    wall = time.perf_counter() - marks["wall"]
    cpu = common.cpu_seconds() - marks["cpu"]
    now = {**marks.get("seen", {}), **_backend_cpu(monitor)}
    backend_cpu = sum(used - marks["backends"].get(pid, 0.0) for pid, used in now.items())
    machine = common.machine_busy() - marks["machine"]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "client_cpu_s": round(cpu, 2),
        "backend_cpu_s": round(backend_cpu, 2),
        # Cores kept busy by everything else (the other engineer's tests, their
        # PostgreSQL, the kernel), averaged over the measurement.
        "other_load_cores": round(max(0.0, machine - cpu - backend_cpu) / wall, 2)
        if wall
        else None,
        "loadavg_1m_start": round(marks["load"], 2),
        "rss_start_mb": round(marks["rss_start_kb"] / 1024, 1),
        "peak_rss_mb": round(maxrss / 1024, 1),
        "peak_growth_mb": round(max(0, maxrss - marks["maxrss_before_kb"]) / 1024, 1),
    }


def _child(system: str, args: dict, total: int, queue) -> None:
    try:
        if system == "ceiling":
            result = _measure_ceiling(args, total)
        elif system == "peer":
            result = _measure_peer(args, total)
        elif system == "ours_enc":  # the same replay, on the encrypted copy
            os.environ["DATABASE_URL"] = f"{PG_URL}/{DB_ENC}"
            _MEASURED["db"] = DB_ENC
            result = _measure_ours("ours", args, total)
        else:
            result = _measure_ours(system, args, total)
        queue.put(result)
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def measure(system: str, args: dict, total: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(system, args, total, queue), daemon=True)
    proc.start()
    result = queue.get(timeout=FULL_RUN_LIMIT + 120)
    proc.join(timeout=60)
    if "error" in result:
        raise RuntimeError(f"{system} failed:\n{result['error']}")
    result["system"] = system
    result["events_per_s_with_startup"] = round(result["events"] / result["seconds"], 1)
    result["events_per_s"] = (
        result.get("steady_events_per_s") or result["events_per_s_with_startup"]
    )
    return result


# --- checks -------------------------------------------------------------------------------

# The read model the events dictate, computed in SQL: the last non-null value of each field.
_EXPECTED_SQL = """
WITH ev AS (
    SELECT (data->>'user_id')::uuid AS id, event_type, data, version, position, recorded_at,
           transaction_id
    FROM events WHERE category = 'user'
), folded AS (
    SELECT id,
           (array_agg(data->>'email' ORDER BY transaction_id DESC, position DESC)
               FILTER (WHERE data->>'email' IS NOT NULL))[1] AS email,
           (array_agg(data->>'first_name' ORDER BY transaction_id DESC, position DESC)
               FILTER (WHERE data->>'first_name' IS NOT NULL))[1] AS first_name,
           (array_agg(data->>'last_name' ORDER BY transaction_id DESC, position DESC)
               FILTER (WHERE data->>'last_name' IS NOT NULL))[1] AS last_name,
           max(version) AS version,
           (array_agg(position ORDER BY transaction_id DESC, position DESC))[1] AS last_position,
           min(recorded_at) FILTER (WHERE event_type = 'UserCreated') AS created_at,
           (array_agg(recorded_at ORDER BY transaction_id DESC, position DESC))[1] AS updated_at
    FROM ev GROUP BY id
)
SELECT count(*), md5(string_agg(concat_ws('|', id, email, first_name, last_name, 'active',
       version, last_position, created_at, updated_at), ',' ORDER BY id))
FROM folded
"""
_ACTUAL_SQL = """
SELECT count(*), md5(string_agg(concat_ws('|', id, email, first_name, last_name, status,
       version, last_position, created_at, updated_at), ',' ORDER BY id))
FROM users_user
"""


def check_read_model(db: str = DB) -> dict[str, Any]:
    """The read model of ``db`` against the one the plaintext events dictate."""
    with _connect(autocommit=True) as conn:
        expected = conn.execute(_EXPECTED_SQL).fetchone()
    with _connect(db, autocommit=True) as conn:
        actual = conn.execute(_ACTUAL_SQL).fetchone()
    return {
        "expected_rows": expected[0],
        "actual_rows": actual[0],
        "identical": tuple(expected) == tuple(actual),
    }


def feed_order_probe() -> dict[str, Any]:
    """Page through a 4-event feed with store.read_all(limit=1), xids straddling a power of 10.

    The events sit in a scratch schema (same table definition) that search_path puts
    first, so the store's own statement reads them: as in the working tree, with 267ee2b's
    ORDER BY, and with the fix. With 267ee2b's, the feed orders xids as text ('100002' <
    '99998'): it returns the later transaction first and its cursor then jumps past the
    earlier one, which is never delivered. The power of ten is the largest below the
    feed's horizon: on a young cluster, xids above it would be invisible to every feed.
    """
    import django

    django.setup()
    from django.db import connection, transaction

    from eventstore import store

    power = 10 ** (len(str(store.horizon().transaction_id - 3)) - 1)
    rows = [  # position, xid, stream, version
        (1, power - 2, "probe-a", 0),
        (2, power - 1, "probe-b", 0),
        (3, power + 1, "probe-a", 1),
        (4, power + 2, "probe-b", 1),
    ]

    def page_through() -> list[tuple[int, int]]:
        seen, after = [], None
        for _ in range(10):
            page = store.read_all(after, limit=1)
            seen += [(e.cursor.transaction_id, e.position) for e in page.events]
            if not page.events:
                break
            after = page.next_cursor
        return seen

    out: dict[str, Any] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA order_probe")
        cursor.execute("CREATE TABLE order_probe.events (LIKE public.events INCLUDING ALL)")
        for position, xid, stream, version in rows:
            cursor.execute(
                "INSERT INTO order_probe.events (position, transaction_id, stream_id, version, "
                "category, event_id, event_type, data, metadata, recorded_at) VALUES "
                "(%s, %s::text::xid8, %s, %s, 'probe', gen_random_uuid(), 'UserDeleted', "
                "jsonb_build_object('user_id', gen_random_uuid()), '{}', now())",
                [position, xid, stream, version],
            )
        cursor.execute("SET LOCAL search_path TO order_probe, public")
        out["expected"] = [[xid, position] for position, xid, _s, _v in rows]
        tree = store._FEED_SQL
        out["working_tree"] = [list(x) for x in page_through()]
        store._FEED_SQL = _text_sort_feed_sql(tree)
        out["head_text_sort"] = [list(x) for x in page_through()]
        store._FEED_SQL = _fixed_feed_sql(tree)
        out["order_by_fixed"] = [list(x) for x in page_through()]
        store._FEED_SQL = tree
        transaction.set_rollback(True)
    for key in ("working_tree", "head_text_sort", "order_by_fixed"):
        out[f"{key}_skips"] = len(out["expected"]) - len(out[key])
    return out


def _probe_child(queue) -> None:
    try:
        queue.put(feed_order_probe())
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def run_probe() -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe_child, args=(queue,), daemon=True)
    proc.start()
    result = queue.get(timeout=120)
    proc.join(timeout=30)
    return result


def explain_feed_page(at_fraction: float = 0.5, batch_size: int = 2000) -> dict[str, str]:
    """EXPLAIN ANALYZE of one feed page in the middle of the table, as committed and fixed."""
    from eventstore.store import _COLUMNS, _FEED_SQL

    out = {}
    with _connect(autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        xid, position = conn.execute(
            "SELECT transaction_id::text, position FROM events "
            "ORDER BY events.transaction_id, events.position OFFSET %s LIMIT 1",
            [int(total * at_fraction)],
        ).fetchone()
        variants = (
            ("head_text_sort", _text_sort_feed_sql(_FEED_SQL)),
            ("fixed", _fixed_feed_sql(_FEED_SQL)),
        )
        for name, sql in variants:
            sql = sql.replace("{filters}", "AND event_type = ANY(%(event_types)s)")
            plan = conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + sql,
                {
                    "xid": xid,
                    "position": position,
                    "limit": batch_size,
                    "event_types": ["UserCreated", "UserDeleted", "UserUpdated", "UserWelcomed"],
                },
            ).fetchall()
            out[name] = "\n".join(row[0] for row in plan)
    assert _COLUMNS  # the statement selects transaction_id::text (see _fixed_feed_sql)
    return out


# --- orchestration --------------------------------------------------------------------------


def _versions() -> dict[str, Any]:
    from importlib.metadata import version

    info = _admin_sql(
        "SHOW server_version", "SHOW fsync", "SHOW synchronous_commit", "SHOW shared_buffers",
        "SHOW work_mem",
    )  # fmt: skip

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": CPUS,
        "python": platform.python_version(),
        "django": version("django"),
        "psycopg": version("psycopg"),
        "eventsourcing": version("eventsourcing"),
        "postgresql": info[0][0][0],
        "fsync": info[1][0][0],
        "synchronous_commit": info[2][0][0],
        "shared_buffers": info[3][0][0],
        "work_mem": info[4][0][0],
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_product_files": [
            line[3:]
            for line in git("status", "--porcelain").splitlines()
            if line[3:].startswith(("eventstore/", "users/", "sagas/", "config/"))
        ],
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarize(runs: list[dict], sizes: list[int]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for size in sizes:
        at = [r for r in runs if r["size"] == size]
        row: dict[str, Any] = {}
        for system in SYSTEMS:
            mine = [r for r in at if r["system"] == system]
            if not mine:
                continue
            row[system] = {
                "events_per_s": _median([r["events_per_s"] for r in mine]),
                "rounds_events_per_s": [r["events_per_s"] for r in mine],
                "events_handled": [r["events"] for r in mine],
                "complete": all(r["complete"] for r in mine),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "peak_growth_mb": max(r["peak_growth_mb"] for r in mine),
                "client_cpu_us_per_event": _median(
                    [r["client_cpu_s"] * 1e6 / r["events"] for r in mine if r["events"]]
                ),
                "backend_cpu_us_per_event": _median(
                    [
                        r["backend_cpu_s"] * 1e6 / r["events"]
                        for r in mine
                        if r["events"] and r.get("backend_cpu_s") is not None
                    ]
                ),
                "other_load_cores": [r["other_load_cores"] for r in mine],
            }
            estimates = [
                r["full_rebuild_estimate"]["estimated_events_per_s"]
                for r in mine
                if r.get("full_rebuild_estimate")
            ]
            if estimates:
                row[system]["estimated_full_events_per_s"] = _median(estimates)

        def ratio(a: str, b: str, row: dict = row) -> float | None:
            x, y = row.get(a, {}).get("events_per_s"), row.get(b, {}).get("events_per_s")
            return round(x / y, 3) if x and y else None

        def paired(a: str, b: str, at: list = at) -> float | None:
            by_round: dict[int, dict[str, float]] = {}
            for r in at:
                by_round.setdefault(r["round"], {})[r["system"]] = r["events_per_s"]
            ratios = [v[a] / v[b] for v in by_round.values() if v.get(a) and v.get(b)]
            return round(statistics.median(ratios), 3) if ratios else None

        for mine in ("ours", "ours_enc", "ours_textsort", "ours_feedfix"):
            for other in ("peer", "ceiling"):
                row[f"{mine}_over_{other}"] = ratio(mine, other)
                row[f"paired_{mine}_over_{other}"] = paired(mine, other)
        row["ours_enc_over_ours"] = ratio("ours_enc", "ours")
        row["paired_ours_enc_over_ours"] = paired("ours_enc", "ours")
        ours_row, peer_row = row.get("ours", {}), row.get("peer", {})
        if ours_row.get("complete"):
            ours_row["full_events_per_s"] = ours_row["events_per_s"]
        else:
            ours_row["full_events_per_s"] = ours_row.get("estimated_full_events_per_s")
        if ours_row.get("full_events_per_s") and peer_row.get("events_per_s"):
            row["ours_full_over_peer"] = round(
                ours_row["full_events_per_s"] / peer_row["events_per_s"], 3
            )
        table[str(size)] = row
    largest = table[str(max(sizes))]
    ours = largest.get("ours", {})
    full = ours.get("full_events_per_s")
    targets = [
        {
            "name": f"rebuild >= 20,000 events/s ({max(sizes):,} events, whole rebuild)",
            "value": full,
            "first_pages_measured": ours.get("events_per_s"),
            "target": 20000,
            "met": bool(full and full >= 20000),
        },
        {
            "name": f"rebuild, encryption on, >= 20,000 events/s ({max(sizes):,} events)",
            "value": largest.get("ours_enc", {}).get("events_per_s"),
            "cost_over_plaintext": largest.get("paired_ours_enc_over_ours"),
            "target": 20000,
            "met": bool(
                largest.get("ours_enc", {}).get("complete")
                and largest["ours_enc"]["events_per_s"] >= 20000
            ),
        },
        {
            "name": "rebuild >= 5x pyeventsourcing's projection runner",
            "value": largest.get("ours_full_over_peer"),
            "first_pages_measured": largest.get("ours_over_peer"),
            "target": 5.0,
            "met": bool(
                largest.get("ours_full_over_peer") and largest["ours_full_over_peer"] >= 5.0
            ),
        },
        {
            "name": "peak memory flat (not proportional to the event count)",
            "value": {
                s: [table[str(n)].get(s, {}).get("peak_rss_mb") for n in sizes]
                for s in ("ours", "peer")
            },
            "target": "flat",
            "met": _flat([table[str(n)].get("ours", {}).get("peak_rss_mb") for n in sizes]),
        },
    ]
    return {"by_size": table, "targets": targets}


def _flat(values: list[float | None]) -> bool:
    values = [v for v in values if v]
    return bool(values) and max(values) <= 1.25 * min(values)


def chart(summary: dict, sizes: list[int], path: Path, environment: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in SYSTEMS if any(s in summary["by_size"][str(n)] for n in sizes)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.2), gridspec_kw={"width_ratios": [1.5, 1]})
    ax = axes[0]
    width = 0.8 / len(present)
    for k, system in enumerate(present):
        xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(sizes))]
        ys = [summary["by_size"][str(n)].get(system, {}).get("events_per_s") or 0 for n in sizes]
        ax.bar(xs, ys, width, color=COLORS[system], label=LABELS[system])
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y / 1000:.1f}k" if y < 100_000 else f"{y / 1000:.0f}k",
                (x, y), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7,
            )  # fmt: skip
    ax.axhline(20000, color="green", linestyle=":", linewidth=1)
    ax.annotate("target 20k/s", (len(sizes) - 0.5, 20000), color="green", fontsize=8,
                xytext=(0, 3), textcoords="offset points", ha="right")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [f"{n:,} events" for n in sizes])
    ax.set_ylabel("events/s (median of rounds, log scale)")
    ax.set_title("Rebuilding the users projection from the first event")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)

    ax = axes[1]
    for system in ("ours", "peer", "ceiling"):
        if system not in present:
            continue
        ys = [summary["by_size"][str(n)].get(system, {}).get("peak_rss_mb") for n in sizes]
        ax.plot([n / 1000 for n in sizes], ys, marker="o", color=COLORS[system],
                label=LABELS[system])  # fmt: skip
    ax.set_xlabel("events in the store (thousands)")
    ax.set_ylabel("peak RSS of the process (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Peak memory vs event count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"PostgreSQL {environment['postgresql'].split()[0]}, {CPUS} cores, shared machine "
        f"(other load during the runs: {environment['other_load_summary']})",
        fontsize=10,
    )
    common.save_chart(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument("--batch-size", type=int, default=2000, help="replay batch size")
    parser.add_argument(
        "--budget", type=float, default=10.0,
        help="seconds for the runs that are not taken to the end (a text-sorting feed, the "
        "peer); their rate is events handled / seconds",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="rounds at the largest size")
    parser.add_argument("--small-rounds", type=int, default=1, help="rounds at the others")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--profile", action="store_true", help="cProfile ours once")
    parser.add_argument(
        "--estimate-from",
        type=float,
        default=None,
        help="seconds of a text-sorting run the whole-rebuild estimate uses (default: --budget;"
        " with a large --budget, the run goes to the end and checks the estimate)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rebuild.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "rebuild.png")
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    tree_fixed = tree_feed_is_fixed()
    # The what-if that differs from the tree: 267ee2b's text sort if the tree has the fix,
    # the fix if it has the text sort.
    wanted = set(args.systems.split(","))
    wanted.discard("ours_feedfix" if tree_fixed else "ours_textsort")
    systems = [s for s in SYSTEMS if s in wanted]
    budgets = {s: args.budget for s in systems if _quadratic(s, tree_fixed)}
    budgets["peer"] = args.budget
    if "ours_feedfix" in systems:
        budgets["ours_feedfix"] = args.budget
    child_args = {
        "batch_size": args.batch_size,
        "budgets": budgets,
        "estimate_from": args.estimate_from or args.budget,
    }

    started = time.time()
    print(f"preparing database {DB!r} (dropped and recreated)", flush=True)
    prepare_database()
    environment = _versions()
    environment["activity_at_start"] = _activity()
    environment["tree_feed_order_by_fixed"] = tree_fixed
    probe = run_probe()
    print(f"feed order probe: {json.dumps(probe)}", flush=True)

    generator = Generator()
    stages, runs, explains, checks = [], [], {}, {}
    profile = None
    for size in sizes:
        info = generator.stage(size)
        stages.append(info)
        print(f"stage {size:,}: {json.dumps(info)}", flush=True)
        explains[str(size)] = explain_feed_page(batch_size=args.batch_size)
        largest = size == max(sizes)
        rounds = args.rounds if largest else args.small_rounds
        # The smaller stages show how rate and memory move with the event count; the
        # what-if runs at the largest only.
        here = [s for s in systems if largest or s in ("ours", "ours_enc", "ceiling", "peer")]
        for round_no in range(rounds):
            order = here[round_no % len(here) :] + here[: round_no % len(here)]
            for system in order:
                run_args = dict(child_args)
                if system == "ours" and not tree_fixed and size == min(sizes):
                    # Once to the end with the text sort: checks the whole-rebuild estimate.
                    run_args["budgets"] = {**budgets, "ours": FULL_RUN_LIMIT}
                result = measure(system, run_args, size)
                result.update(size=size, round=round_no)
                runs.append(result)
                print(
                    f"  {size:>9,} round {round_no} {system:13} {result['events_per_s']:>10,.0f} "
                    f"events/s ({result['events']:,} events in {result['seconds']:.1f} s"
                    f"{'' if result['complete'] else ', budget'}); peak RSS "
                    f"{result['peak_rss_mb']} MB (+{result['peak_growth_mb']}); CPU "
                    f"{result['client_cpu_s']} + {result.get('backend_cpu_s')} s; other load "
                    f"{result['other_load_cores']} cores",
                    flush=True,
                )
                if result.get("full_rebuild_estimate"):
                    print(f"    estimate: {result['full_rebuild_estimate']}", flush=True)
                key = f"{size}/{system}"
                if system in ("ours", "ours_enc") and result["complete"] and key not in checks:
                    checks[key] = check_read_model(DB_ENC if system == "ours_enc" else DB)
                    print(f"    read model check: {checks[key]}", flush=True)
        if args.profile and profile is None:
            profile_args = {**child_args, "profile": True}
            profile_args["budgets"] = {**budgets, "ours": args.budget}
            profile = measure("ours", profile_args, size).get("profile")
            print(f"  profile: {json.dumps(profile['cumulative_s'])}", flush=True)

    summary = summarize(runs, sizes)
    loads = [r["other_load_cores"] for r in runs]
    environment["activity_at_end"] = _activity()
    environment["other_load_summary"] = (
        f"{min(loads):.1f}-{max(loads):.1f} cores, median {statistics.median(loads):.1f}"
    )
    result = {
        "benchmark": "bench/rebuild.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "sizes": sizes,
            "batch_size": args.batch_size,
            "budget_s": args.budget,
            "budgeted_systems": sorted(budgets),
            "rounds_at_largest": args.rounds,
            "rounds_at_others": args.small_rounds,
            "systems": systems,
            "users_per_block": BLOCK,
            "events_per_user": "1 UserCreated + 2..6 UserUpdated (4 on average)",
        },
        "environment": environment,
        "stages": stages,
        "feed_order_probe": probe,
        "explain_feed_page": explains,
        "read_model_checks": checks,
        "summary": summary,
        "runs": runs,
        "profile_ours": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(summary, sizes, args.chart, environment)

    print("\nsummary (events/s: median of rounds)")
    for size, row in summary["by_size"].items():
        rates = ", ".join(f"{s} {row[s]['events_per_s']:,.0f}" for s in systems if s in row)
        print(f"  {int(size):>9,}: {rates}")
        print(
            f"             ours whole rebuild {row.get('ours', {}).get('full_events_per_s')}, "
            f"ours/peer {row.get('ours_full_over_peer')} "
            f"(first pages {row.get('ours_over_peer')}), "
            f"ours/ceiling {row.get('ours_over_ceiling')}, "
            f"encrypted/plaintext {row.get('ours_enc_over_ours')} "
            f"(paired {row.get('paired_ours_enc_over_ours')})"
        )
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
