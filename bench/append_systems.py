"""What ``bench/append.py`` measures: our store's appends and loads (encryption off and on),
the raw SQL ceiling, and pyeventsourcing's, each set up inside the writer process.

Importing it sets the environment Django reads (``DATABASE_URL`` of the bench database).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
import uuid
from functools import singledispatchmethod
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
OURS_DB = "bench"
PEER_DB = "bench_peer"
# The settings read these; the bench always uses its own database (it is dropped), and
# DEBUG off so Django does not keep a log of every query (as in production).
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ["DATABASE_URL"] = f"{PG_URL}/{OURS_DB}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ["DEBUG"] = "false"
os.environ.setdefault("DJANGO_ENV", "development")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# A master key for this run's personal data (the database is dropped each run); spawned
# writers inherit it.
os.environ.setdefault("PERSONAL_DATA_MASTER_KEYS", base64.b64encode(os.urandom(32)).decode())
os.environ.setdefault("PERSONAL_DATA_HMAC_KEY", base64.b64encode(os.urandom(32)).decode())

STREAMS_PER_WRITER = 50
BATCH = 100
AGGREGATE_EVENTS = 1000
NOTE = "a short free-text note, about forty chars"


def _pg_params(dbname: str) -> dict[str, Any]:
    return common.pg_params(PG_URL, dbname)


# --- our side: a tiny aggregate and event, defined in each process after setup ----------

_OURS: dict[str, Any] = {}


def _ours_types(personal: bool = False) -> tuple[type, type]:
    """(BenchRecorded, BenchAggregate), registered once per process; with ``personal``,
    the event whose ``name`` and ``note`` are sealed with the key of its ``owner``."""
    if not _OURS:
        from eventstore.aggregate import Aggregate
        from eventstore.types import domain_event

        @domain_event("bench.Recorded")
        class BenchRecorded:
            name: str
            amount: int
            note: str
            flag: bool

        @domain_event("bench.PersonalRecorded", personal=("name", "note"), subject="owner")
        class BenchPersonalRecorded:
            owner: uuid.UUID
            name: str
            amount: int
            note: str
            flag: bool

        class BenchAggregate(Aggregate):
            category = "benchagg"

            def __init__(self, aggregate_id: uuid.UUID) -> None:
                super().__init__(aggregate_id)
                self.count = 0
                self.total = 0
                self.name = ""

            @singledispatchmethod
            def apply(self, event: object) -> None:
                raise TypeError(type(event).__name__)

            @apply.register(BenchRecorded)
            @apply.register(BenchPersonalRecorded)
            def _(self, event: Any) -> None:
                self.count += 1
                self.total += event.amount
                self.name = event.name

        _OURS.update(event=BenchRecorded, personal=BenchPersonalRecorded, aggregate=BenchAggregate)
    return _OURS["personal" if personal else "event"], _OURS["aggregate"]


def _recorded(personal: bool, stream_id: str, **fields: Any) -> Any:
    """The bench event; the personal one's subject is the stream's own id."""
    Recorded, _ = _ours_types(personal)
    if personal:
        return Recorded(owner=uuid.UUID(stream_id.split("-", 1)[1]), **fields)
    return Recorded(**fields)


def _setup_django(no_signals: bool) -> None:
    import django

    django.setup()
    if no_signals:
        from eventstore import signals

        signals.events_appended.receivers.clear()
        signals.events_appended.sender_receivers_cache.clear()


# --- the peer: pyeventsourcing ------------------------------------------------------------

try:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as PeerAggregate
    from eventsourcing.domain import event as peer_event

    class PeerBench(PeerAggregate):
        """The same state and event fields as the bench aggregate on our side."""

        def __init__(self) -> None:
            self.count = 0
            self.total = 0
            self.name = ""

        @peer_event("Recorded")
        def record(self, name: str, amount: int, note: str, flag: bool) -> None:
            self.count += 1
            self.total += amount
            self.name = name

except ImportError:  # reported in main() with the command to install the bench group
    Application = None  # type: ignore[assignment,misc]


def peer_env(create_table: bool) -> dict[str, str]:
    p = _pg_params(PEER_DB)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"],
        "POSTGRES_PORT": str(p["port"]),
        "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"],
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y" if create_table else "n",
    }


# --- writers (each one a spawned process) ---------------------------------------------------


def _ours_writer(idx: int, batch: int, no_signals: bool, personal: bool = False):
    _setup_django(no_signals)
    from django.db import connection

    from eventstore import store

    streams = [f"benchagg-{uuid.uuid4()}" for _ in range(STREAMS_PER_WRITER)]
    versions = {}
    for sid in streams:
        first = _recorded(personal, sid, name="w", amount=0, note=NOTE, flag=True)
        versions[sid] = store.append(sid, [first], store.NO_STREAM).version
    name = f"writer-{idx}"
    state = {"i": 0}

    def op() -> None:
        i = state["i"] = state["i"] + 1
        sid = streams[i % STREAMS_PER_WRITER]
        events = [
            _recorded(personal, sid, name=name, amount=i, note=NOTE, flag=True)
            for _ in range(batch)
        ]
        versions[sid] = store.append(sid, events, versions[sid]).version

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    return op, backend_pid


def _placeholders(sql: str, binary: bool) -> str:
    """``%(name)s`` (text, quoted client-side) or ``%(name)b`` (binary) placeholders."""
    if binary:
        return re.sub(r"%\((\w+)\)s", r"%(\1)b", sql)
    return re.sub(r"%\((\w+)\)b", r"%(\1)s", sql)


def _ceiling_writer(idx: int, batch: int, no_signals: bool, binary: bool = False):
    import psycopg

    from eventstore.store import _APPEND_SQL  # the SQL text only; Django is not set up

    conn = psycopg.connect(**_pg_params(OURS_DB), autocommit=True)
    sql = _placeholders(_APPEND_SQL["exact"], binary)
    data = json.dumps({"name": f"writer-{idx}", "amount": 1, "note": NOTE, "flag": True})
    root = str(uuid.uuid4())
    meta = json.dumps({"correlation_id": root, "causation_id": root, "actor": "system"})
    streams = [f"benchagg-{uuid.uuid4()}" for _ in range(STREAMS_PER_WRITER)]
    versions = {}
    with conn.cursor() as cur:
        for sid in streams:
            cur.execute(
                "INSERT INTO streams (stream_id, category, version, created_at, updated_at) "
                "VALUES (%s, 'benchagg', -1, now(), now())",
                [sid],
            )
            versions[sid] = -1
    types, schemas, datas, metas = (
        ["bench.Recorded"] * batch,
        [1] * batch,
        [data] * batch,
        [meta] * batch,
    )
    cur = conn.cursor()
    state = {"i": 0}

    def op() -> None:
        i = state["i"] = state["i"] + 1
        sid = streams[i % STREAMS_PER_WRITER]
        cur.execute(
            sql,
            {
                "stream_id": sid,
                "category": "benchagg",
                "count": batch,
                "expected": versions[sid],
                "event_ids": [uuid.uuid4() for _ in range(batch)],
                "event_types": types,
                "schema_versions": schemas,
                "data": datas,
                "metadata": metas,
            },
        )
        rows = cur.fetchall()
        if len(rows) != batch:
            raise RuntimeError(f"ceiling append refused at {sid}@{versions[sid]}")
        versions[sid] += batch

    return op, conn.info.backend_pid


def _peer_writer(idx: int, batch: int, no_signals: bool):
    app = Application(env=peer_env(create_table=False))
    aggregates = [PeerBench() for _ in range(STREAMS_PER_WRITER)]
    app.save(*aggregates)
    name = f"writer-{idx}"
    state = {"i": 0}

    def op() -> None:
        i = state["i"] = state["i"] + 1
        aggregate = aggregates[i % STREAMS_PER_WRITER]
        for _ in range(batch):
            aggregate.record(name=name, amount=i, note=NOTE, flag=True)
        app.save(aggregate)

    with app.recorder.datastore.get_connection() as conn:  # its pool holds one connection
        backend_pid = conn.info.backend_pid
    return op, backend_pid


def _ceiling_bin_writer(idx: int, batch: int, no_signals: bool):
    """The same SQL and values, but the parameters sent in binary (``%b``), not as text:
    psycopg then skips escaping every quote of every JSON text in the arrays."""
    return _ceiling_writer(idx, batch, no_signals, binary=True)


def _ours_enc_writer(idx: int, batch: int, no_signals: bool):
    return _ours_writer(idx, batch, no_signals, personal=True)


WRITER_FACTORIES = {
    "ours": _ours_writer,
    "ours_enc": _ours_enc_writer,
    "ceiling": _ceiling_writer,
    "ceiling_bin": _ceiling_bin_writer,
    "peer": _peer_writer,
}


# --- aggregate loads: one process, the three systems interleaved ----------------------------


def timed_loads(args: Any) -> dict:
    import psycopg

    _setup_django(args.no_signals)
    from eventstore import reads, store
    from eventstore.aggregate import Repository

    # Ours: a 1,000-event stream, appended 100 at a time; again with encryption on.
    _, BenchAggregate = _ours_types()
    repository = Repository(BenchAggregate)
    aggregate_ids = {}
    for personal in (False, True):
        aggregate_id = aggregate_ids[personal] = uuid.uuid4()
        sid = BenchAggregate.stream_id_for(aggregate_id)
        version = store.NO_STREAM
        for chunk in range(AGGREGATE_EVENTS // BATCH):
            events = [
                _recorded(personal, sid, name=f"n{chunk}", amount=j, note=NOTE, flag=True)
                for j in range(BATCH)
            ]
            version = store.append(sid, events, version).version
    sid = BenchAggregate.stream_id_for(aggregate_ids[False])

    def ours(personal: bool = False) -> None:
        aggregate = repository.load(aggregate_ids[personal])
        assert aggregate.count == AGGREGATE_EVENTS
        assert aggregate.version == AGGREGATE_EVENTS - 1
        assert aggregate.name == f"n{AGGREGATE_EVENTS // BATCH - 1}"

    def ours_enc() -> None:
        ours(personal=True)

    def ours_read_decode() -> None:  # where the time goes: read + decode, no apply
        reads.load_stream_payloads(sid)

    # Floor: the query load_stream_payloads runs, same rows, fetched and not decoded.
    conn = psycopg.connect(**_pg_params(OURS_DB), autocommit=True)
    cur = conn.cursor()

    def floor() -> None:
        cur.execute(
            "SELECT version, event_type, schema_version, data::text FROM events "
            "WHERE stream_id = %s ORDER BY version",
            [sid],
        )
        assert len(cur.fetchall()) == AGGREGATE_EVENTS

    # Peer: a 1,000-event aggregate (its Created event is the first), saved 100 at a time.
    app = Application(env=peer_env(create_table=False))
    peer_aggregate = PeerBench()
    for chunk in range(AGGREGATE_EVENTS // BATCH):
        for j in range(BATCH - (1 if chunk == 0 else 0)):
            peer_aggregate.record(name=f"n{chunk}", amount=j, note=NOTE, flag=True)
        app.save(peer_aggregate)
    assert peer_aggregate.version == AGGREGATE_EVENTS  # pyeventsourcing counts from 1

    def peer() -> None:
        got = app.repository.get(peer_aggregate.id)
        assert got.version == AGGREGATE_EVENTS

    def peer_select() -> None:  # its SQL + row building, no decoding
        app.recorder.select_events(peer_aggregate.id)

    timed = {
        "ours": ours,
        "ours_enc": ours_enc,
        "floor": floor,
        "peer": peer,
        "ours_read_decode": ours_read_decode,
        "peer_select": peer_select,
    }
    times: dict[str, list[float]] = {name: [] for name in timed}
    clock = time.perf_counter
    for iteration in range(args.loads + 5):  # the first 5 are warm-up
        for name, fn in timed.items():
            start = clock()
            fn()
            if iteration >= 5:
                times[name].append((clock() - start) * 1000)
    conn.close()
    return {"stream_id": sid, "times_ms": times}
