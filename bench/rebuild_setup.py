"""The rebuild benchmark's data: a million user events in the store's shape, the same
events sealed as the store seals personal data, and pyeventsourcing's copy and projection.

``bench/rebuild.py`` uses it; see its docstring. Everything here runs against the
databases ``bench_rebuild`` and ``bench_rebuild_enc`` on ``BENCH_PG_URL``, which it drops.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
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

BLOCK = 2000  # users created per generation chunk; their updates land in later chunks
MAX_UPDATES = 6  # user i gets 2 + i % 5 updates: 4 on average, 5 events per user


def connect(dbname: str = DB, **kwargs: Any) -> Any:
    return common.connect(PG_URL, dbname, **kwargs)


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
        with connect() as conn:
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
        with connect(autocommit=True) as conn:
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
        common.admin_sql(
            PG_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
        )
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": f"{PG_URL}/{name}"},
            check=True,
        )
    with connect(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {PEER_SCHEMA}")
    app = peer_classes()["app"](env={**peer_env(), "CREATE_TABLE": "y"})  # its events table
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


def _seal(after: tuple[str, int]) -> tuple[str, int]:
    """Copy the events after ``after`` into the encrypted database, sealed as append seals
    them (registry.encode with a key ring on that database), in feed order; the new cursor."""
    os.environ["DATABASE_URL"] = f"{PG_URL}/{DB_ENC}"
    import django

    django.setup()
    from django.db import connection, transaction

    from eventstore.personal import KeyRing
    from eventstore.types import registry

    with connect(autocommit=True) as source:
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
    return after


def seal_copy(after: tuple[str, int]) -> tuple[str, int]:
    """Bring the encrypted database up to the plaintext one (in a process of its own, set
    up on that database); the new copy cursor."""
    return common.in_fresh_process(_seal, after, timeout=3600)


# --- the peer: pyeventsourcing 9.5 ----------------------------------------------------------


def peer_env() -> dict[str, str]:
    p = common.pg_params(PG_URL, DB)
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


def peer_classes() -> dict[str, Any]:
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
    with connect(autocommit=True) as conn:
        expected = conn.execute(_EXPECTED_SQL).fetchone()
    with connect(db, autocommit=True) as conn:
        actual = conn.execute(_ACTUAL_SQL).fetchone()
    return {
        "expected_rows": expected[0],
        "actual_rows": actual[0],
        "identical": tuple(expected) == tuple(actual),
    }
