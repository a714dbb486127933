"""Appends and aggregate loads: our event store vs the raw SQL ceiling vs pyeventsourcing.

Run (one command, from the project root, about 4 minutes)::

    .venv/bin/python bench/append.py

It needs the ``bench`` dependency group (``uv sync --frozen --all-groups``) and a
PostgreSQL server reachable as ``postgres://postgres@127.0.0.1:5432`` (trust auth; set
``BENCH_PG_URL`` to use another server). It DROPS and recreates the databases ``bench``
(ours and the raw ceiling, migrated with ``manage.py migrate``) and ``bench_peer``
(pyeventsourcing's tables) at the start of every run. Options: ``--seconds`` per
measured round per system (default 1.0), ``--rounds`` (default 6), ``--warmup`` seconds
(default 1), ``--loads`` (timed aggregate loads, default 40), ``--no-signals``
(disconnect ``events_appended`` receivers, to isolate the storage path), ``--out`` and
``--chart``.

What is measured, each writer in its own process (threads would measure the GIL), each
process with its own connection and its own streams (50 per writer, round-robin):

* ours     ``eventstore.store.append(stream_id, [event], expected_version)`` through
           Django (``django.setup()`` in every process), exact expected version;
           1, 4 and 8 writers; then 100 events per call at 1 and 4 writers; then
           ``Repository.load`` of a 1,000-event aggregate (median of ``--loads``).
           Its event has no personal fields: encryption off.
* ours_enc the same with encryption on: the event's ``name`` and ``note`` are declared
           personal, each stream its own data subject (a key of its own), so every
           append seals them (and fetches the stream's key: one more statement) and
           every load opens them (one key query per load).
* ceiling  the same SQL the store runs (``eventstore.store._APPEND_SQL["exact"]``:
           stream-row update with the version check + events insert in one statement)
           on a plain psycopg connection in autocommit, parameters pre-encoded and sent
           as text (psycopg's default ``%s``; the store itself sends binary); and a
           plain SELECT of the 1,000 rows (no decoding) as the load floor.
* ceiling_bin  the same SQL and values with the parameters sent in binary (``%b``
           placeholders): psycopg then skips escaping, in Python, every quote of every
           JSON text in the arrays, which is most of the text ceiling's client time.
* peer     pyeventsourcing 9.5, ``Application`` with its PostgreSQL application recorder:
           ``app.save(aggregate)`` after one (or 100) new events, and
           ``app.repository.get(id)`` of a 1,000-event aggregate.

The machine is shared (other engineers run the test suite on the same 2 cores and
disk), so the systems are measured in interleaved rounds: at each point all the
writers of all the systems are started, set up and warmed up (``--warmup`` s), then
``--rounds`` rounds (default 6) each run every system in turn, rotating the order, for
``--seconds`` (default 1.0) after a 0.3 s unmeasured restart; the other systems' writers
sit idle on a barrier meanwhile. A point's figure is the median over its rounds; the JSON
also has every round, the same-round ("paired") ratios, the load average and pytest
processes seen during each round, and the CPU time per event of the writer processes
and of their PostgreSQL backends (read from /proc), which noise barely moves. Results go
to ``bench/results/append.json`` (gitignored) and the chart to ``docs/img/append.png``.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
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
WRITERS = (1, 4, 8)
BATCH_WRITERS = (1, 4)
SYSTEMS = ("ceiling", "ceiling_bin", "ours", "ours_enc", "peer")
LABELS = {
    "ours": "ours (eventstore.store.append)",
    "ours_enc": "ours, personal fields encrypted",
    "peer": "pyeventsourcing 9.5",
    "ceiling": "ceiling: raw psycopg, same SQL text",
    "ceiling_bin": "ceiling, binary parameters",
}
COLORS = {
    "ours": "#1f77b4",
    "ours_enc": "#2ca02c",
    "peer": "#d62728",
    "ceiling": "#7f7f7f",
    "ceiling_bin": "#303030",
}
CPUS = os.cpu_count() or 1
ROUND_WARMUP = 0.3  # seconds each writer runs unmeasured at the start of every round
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


def _peer_env(create_table: bool) -> dict[str, str]:
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
    app = Application(env=_peer_env(create_table=False))
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


def _writer_process(system, idx, batch, args, barrier, queue) -> None:
    """Set up, warm up, say ready, then run one measured window per round."""
    try:
        op, backend_pid = WRITER_FACTORIES[system](idx, batch, args.no_signals)
        clock = time.perf_counter
        end = clock() + args.warmup
        while clock() < end:
            op()
        queue.put({"idx": idx, "ready": True})
        for round_no in range(args.rounds):
            barrier.wait(timeout=600)
            end = clock() + ROUND_WARMUP  # back to steady state after idling
            while clock() < end:
                op()
            latencies = []
            client_cpu, server_cpu = common.cpu_seconds(), common.cpu_seconds(backend_pid)
            start = now = clock()
            deadline = start + args.seconds
            while now < deadline:
                op()
                after = clock()
                latencies.append(after - now)
                now = after
            client_cpu = common.cpu_seconds() - client_cpu
            server_end = common.cpu_seconds(backend_pid)
            queue.put(
                {
                    "idx": idx,
                    "round": round_no,
                    "calls": len(latencies),
                    "elapsed": now - start,
                    "latencies": latencies,
                    "client_cpu": client_cpu,
                    "server_cpu": None if server_end is None else server_end - server_cpu,
                }
            )
    except Exception:
        barrier.abort()
        queue.put({"idx": idx, "error": traceback.format_exc()})


# --- aggregate loads: one process, the three systems interleaved ----------------------------


def _load_process(args, queue) -> None:
    try:
        queue.put(_loads(args))
    except Exception:
        queue.put({"error": traceback.format_exc()})


def _loads(args) -> dict:
    import psycopg

    _setup_django(args.no_signals)
    from eventstore import store
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
        store.load_stream_payloads(sid)

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
    app = Application(env=_peer_env(create_table=False))
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


# --- orchestration (the parent never sets up Django) -------------------------------------------


def _admin_sql(*statements: str) -> list:
    import psycopg

    out = []
    with psycopg.connect(**_pg_params("postgres"), autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            out.append(cur.fetchall() if cur.description else None)
    return out


def _other_activity() -> dict:
    """What else runs while we measure: load average and busy backends outside our DBs."""
    rows = _admin_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        f"AND datname NOT IN ('{OURS_DB}', '{PEER_DB}') AND pid <> pg_backend_pid()"
    )[0]
    busy = 0
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() in {"pytest", "py.test"}:
                busy += 1
        except OSError:
            pass
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "other_active_pg_backends": rows[0][0],
        "pytest_processes": busy,
    }


def prepare_databases() -> None:
    _admin_sql(
        f"DROP DATABASE IF EXISTS {OURS_DB} WITH (FORCE)",
        f"DROP DATABASE IF EXISTS {PEER_DB} WITH (FORCE)",
        f"CREATE DATABASE {OURS_DB}",
        f"CREATE DATABASE {PEER_DB}",
    )
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=os.environ.copy(),
        check=True,
    )
    app = Application(env=_peer_env(create_table=True))  # creates the peer's tables once
    app.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return round(statistics.median(values), 4) if values else None


def run_point(writers: int, batch: int, args) -> list[dict]:
    """All three systems at one (writers, batch) point, in interleaved rounds.

    Every system's writers are started, set up and warmed up first; then each round runs
    one system at a time (the others idle on their barrier), rotating the order, so a
    slow spell on this shared machine hits all three instead of one.
    """
    _admin_sql("CHECKPOINT")  # every point starts with no checkpoint debt
    ctx = mp.get_context("spawn")
    systems = args.systems
    barriers = {system: ctx.Barrier(writers + 1) for system in systems}
    queues = {system: ctx.Queue() for system in systems}
    procs = [
        ctx.Process(
            target=_writer_process,
            args=(system, i, batch, args, barriers[system], queues[system]),
            daemon=True,
        )
        for system in systems
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()

    def collect(system: str) -> list[dict]:
        got = [queues[system].get(timeout=args.seconds + 600) for _ in range(writers)]
        errors = [r["error"] for r in got if "error" in r]
        if errors:
            for proc in procs:
                proc.kill()
            raise RuntimeError(f"{system} x{writers} batch {batch} failed:\n" + "\n".join(errors))
        return got

    for system in systems:
        collect(system)  # everyone set up and warmed up
    rounds: dict[str, list[dict]] = {system: [] for system in systems}
    for round_no in range(args.rounds):
        shift = round_no % len(systems)
        order = systems[shift:] + systems[:shift]
        for system in order:
            activity: dict = {}
            sampler = threading.Timer(
                ROUND_WARMUP + args.seconds / 2, lambda a=activity: a.update(_other_activity())
            )
            barriers[system].wait(timeout=600)
            sampler.start()
            results = collect(system)
            sampler.join()
            calls = sum(r["calls"] for r in results)
            server = [r["server_cpu"] for r in results]
            rounds[system].append(
                {
                    "events_per_s": sum(r["calls"] * batch / r["elapsed"] for r in results),
                    "calls": calls,
                    # CPU per event: far less sensitive to other load than events/s.
                    "client_cpu_ms": 1000 * sum(r["client_cpu"] for r in results) / (calls * batch),
                    "server_cpu_ms": None
                    if None in server
                    else 1000 * sum(server) / (calls * batch),
                    "latencies": [x for r in results for x in r["latencies"]],
                    "activity": activity,
                }
            )
    for proc in procs:
        proc.join(timeout=60)

    points = []
    for system in systems:
        rates = [r["events_per_s"] for r in rounds[system]]
        latencies = sorted(x for r in rounds[system] for x in r["latencies"])
        point = {
            "system": system,
            "writers": writers,
            "events_per_call": batch,
            "events_per_s": round(statistics.median(rates), 1),
            "rounds_events_per_s": [round(x, 1) for x in rates],
            "events": sum(r["calls"] for r in rounds[system]) * batch,
            "measured_s": round(args.seconds * args.rounds, 2),
            "latency_ms_p50": round(_percentile(latencies, 0.5) * 1000, 3),
            "latency_ms_p99": round(_percentile(latencies, 0.99) * 1000, 3),
            "client_cpu_ms_per_event": _median_of(rounds[system], "client_cpu_ms"),
            "server_cpu_ms_per_event": _median_of(rounds[system], "server_cpu_ms"),
            "activity": [r["activity"] for r in rounds[system]],
        }
        points.append(point)
        print(
            f"  {system:8} writers={writers} batch={batch:3}: {point['events_per_s']:9.0f} "
            f"events/s (rounds {', '.join(f'{x:.0f}' for x in rates)}; p50 "
            f"{point['latency_ms_p50']:.2f} ms, p99 {point['latency_ms_p99']:.2f} ms; CPU/event "
            f"{point['client_cpu_ms_per_event']} + {point['server_cpu_ms_per_event']} ms; load "
            f"{', '.join(str(r['activity'].get('loadavg_1m')) for r in rounds[system])})",
            flush=True,
        )
    return points


def run_loads(args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(args, queue), daemon=True)
    proc.start()
    result = queue.get(timeout=600)
    proc.join(timeout=30)
    if "error" in result:
        raise RuntimeError(f"aggregate loads failed:\n{result['error']}")
    out = {"events": AGGREGATE_EVENTS, "loads": args.loads, "stream_id": result["stream_id"]}
    for name, times in result["times_ms"].items():
        times = sorted(times)
        out[name] = {
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(times[0], 3),
            "p90_ms": round(_percentile(times, 0.9), 3),
        }
        print(
            f"  {name:16} {AGGREGATE_EVENTS} events: median {out[name]['median_ms']:.2f} ms "
            f"(min {out[name]['min_ms']:.2f}, p90 {out[name]['p90_ms']:.2f})",
            flush=True,
        )
    return out


def _versions() -> dict:
    from importlib.metadata import version

    info = _admin_sql(
        "SHOW server_version",
        "SHOW fsync",
        "SHOW synchronous_commit",
        "SHOW shared_buffers",
        "SHOW max_wal_size",
    )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": version("django"),
        "psycopg": version("psycopg"),
        "eventsourcing": version("eventsourcing"),
        "postgresql": info[0][0][0],
        "fsync": info[1][0][0],
        "synchronous_commit": info[2][0][0],
        "shared_buffers": info[3][0][0],
        "max_wal_size": info[4][0][0],
        "git_commit": commit,
    }


def _point(points: list[dict], system: str, writers: int, batch: int) -> dict:
    for p in points:
        if (p["system"], p["writers"], p["events_per_call"]) == (system, writers, batch):
            return p
    return {}


def summarize(points: list[dict], loads: dict) -> dict:
    present = [s for s in SYSTEMS if any(p["system"] == s for p in points)]

    def find(system: str, writers: int, batch: int) -> dict:
        return _point(points, system, writers, batch)

    def cpu(writers: int, batch: int) -> dict:
        """CPU ms per event, client + server, and the rate the cores could sustain."""
        out = {}
        for system in present:
            p = find(system, writers, batch)
            client, server = p.get("client_cpu_ms_per_event"), p.get("server_cpu_ms_per_event")
            total = client + server if client is not None and server is not None else None
            out[system] = {
                "client_ms": client,
                "server_ms": server,
                "total_ms": round(total, 4) if total else None,
                "cpu_bound_events_per_s": round(CPUS * 1000 / total) if total else None,
            }
        return out

    def paired(writers: int, batch: int, mine: str, other: str) -> float | None:
        """Median over rounds of mine/other measured in the same round (robust to drift)."""
        a = find(mine, writers, batch).get("rounds_events_per_s") or []
        b = find(other, writers, batch).get("rounds_events_per_s") or []
        ratios = [x / y for x, y in zip(a, b, strict=False) if y]
        return round(statistics.median(ratios), 3) if ratios else None

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    def row(writers: int, batch: int) -> dict:
        rates = {s: find(s, writers, batch).get("events_per_s") for s in present}
        out: dict[str, Any] = dict(rates)
        for mine in ("ours", "ours_enc"):
            for other in ("peer", "ceiling", "ceiling_bin"):
                out[f"{mine}_over_{other}"] = ratio(rates[mine], rates[other])
                out[f"paired_{mine}_over_{other}"] = paired(writers, batch, mine, other)
        out["ours_enc_over_ours"] = ratio(rates["ours_enc"], rates["ours"])
        out["paired_ours_enc_over_ours"] = paired(writers, batch, "ours_enc", "ours")
        out["cpu"] = cpu(writers, batch)
        return out

    single = {str(w): row(w, 1) for w in WRITERS}
    batched = {str(w): row(w, BATCH) for w in BATCH_WRITERS}
    lo, lc, lp = (loads[s]["median_ms"] for s in ("ours", "floor", "peer"))
    load = {
        "ours_ms": lo,
        "floor_ms": lc,
        "peer_ms": lp,
        "ours_read_decode_ms": loads["ours_read_decode"]["median_ms"],
        "peer_select_ms": loads["peer_select"]["median_ms"],
        "peer_over_ours": ratio(lp, lo),
        "floor_over_ours": ratio(lc, lo),
        "ours_enc_ms": loads["ours_enc"]["median_ms"],
        "peer_over_ours_enc": ratio(lp, loads["ours_enc"]["median_ms"]),
        "ours_enc_over_ours": ratio(loads["ours_enc"]["median_ms"], lo),
    }
    s8 = single["8"]
    targets = [
        ("single-event appends, 8 writers >= 2x peer", s8["ours_over_peer"], 2.0),
        (
            "single-event appends, encryption on, 8 writers >= 2x peer",
            s8["ours_enc_over_peer"],
            2.0,
        ),
        ("single-event appends, 8 writers >= 50% of ceiling", s8["ours_over_ceiling"], 0.5),
        (
            "(stricter) single-event appends, 8 writers >= 50% of binary-parameter ceiling",
            s8["ours_over_ceiling_bin"],
            0.5,
        ),
    ]
    for w in BATCH_WRITERS:
        b = batched[str(w)]
        targets += [
            (
                f"100-event appends >= 40% of raw batched ceiling ({w} writer(s))",
                b["ours_over_ceiling"],
                0.4,
            ),
            (
                f"(stricter) 100-event appends >= 40% of binary-parameter ceiling ({w} writer(s))",
                b["ours_over_ceiling_bin"],
                0.4,
            ),
        ]
    targets.append(
        ("1,000-event aggregate load >= 1.5x faster than peer", load["peer_over_ours"], 1.5)
    )
    targets.append(
        (
            "1,000-event aggregate load, encryption on, >= 5x faster than peer",
            load["peer_over_ours_enc"],
            5.0,
        )
    )
    return {
        "single_event": single,
        "batch_100": batched,
        "load_1000": load,
        "targets": [
            {"name": n, "value": v, "target": t, "met": v is not None and v >= t}
            for n, v, t in targets
        ],
    }


def chart(points: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in SYSTEMS if any(p["system"] == s for p in points)]
    styles = {"ceiling": "--", "ceiling_bin": ":"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    ax = axes[0]
    for system in present:
        xs = list(WRITERS)
        ys = [summary["single_event"][str(w)][system] for w in WRITERS]
        spread = [_point(points, system, w, 1)["rounds_events_per_s"] for w in WRITERS]
        ax.fill_between(
            xs,
            [min(r) for r in spread],
            [max(r) for r in spread],
            color=COLORS[system],
            alpha=0.10,
            linewidth=0,
        )
        ax.plot(
            xs,
            ys,
            marker="o",
            color=COLORS[system],
            label=LABELS[system],
            linestyle=styles.get(system, "-"),
        )
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y / 1000:.2f}k",
                (x, y),
                textcoords="offset points",
                xytext=(12, -3),
                ha="left",
                fontsize=8,
                color=COLORS[system],
            )
    ax.set_xticks(list(WRITERS))
    ax.set_xlim(0.5, 9.3)
    ax.set_xlabel("concurrent writers (processes)")
    ax.set_ylabel("events/s (median of rounds; band = min..max)")
    ax.set_title("Single-event appends, exact expected version")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.36), ncol=2)

    ax = axes[1]
    width = 0.8 / len(present)
    for k, system in enumerate(present):
        xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(BATCH_WRITERS))]
        ys = [summary["batch_100"][str(w)][system] for w in BATCH_WRITERS]
        ax.bar(xs, ys, width, color=COLORS[system], label=system)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y / 1000:.0f}k",
                (x, y),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(
        range(len(BATCH_WRITERS)), [f"{w} writer{'s' if w > 1 else ''}" for w in BATCH_WRITERS]
    )
    ax.set_ylabel("events/s")
    ax.set_title(f"{BATCH} events per append")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    load = summary["load_1000"]
    names = ["floor (SQL only)", "ours", "ours, encrypted", "peer"]
    values = [load["floor_ms"], load["ours_ms"], load["ours_enc_ms"], load["peer_ms"]]
    colors = [COLORS["ceiling"], COLORS["ours"], COLORS["ours_enc"], COLORS["peer"]]
    bars = ax.bar(names, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.1f} ms",
            (bar.get_x() + bar.get_width() / 2, value),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("ms (median, lower is better)")
    ax.set_title(f"Load a {AGGREGATE_EVENTS:,}-event aggregate")
    ax.grid(alpha=0.3, axis="y")

    activity = [a for p in points for a in p["activity"]]
    busy = sum(1 for a in activity if a.get("pytest_processes"))
    fig.suptitle(
        "Appends and aggregate loads on PostgreSQL 15 (2 cores, fsync on); shared machine: "
        f"a test suite was running during {busy} of {len(activity)} measured rounds",
        fontsize=11,
    )
    common.save_chart(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="measured seconds per system per round"
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per point")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds per process before round 1"
    )
    parser.add_argument("--loads", type=int, default=40, help="timed aggregate loads")
    parser.add_argument(
        "--no-signals",
        action="store_true",
        help="disconnect events_appended receivers (storage path only)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "append.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "append.png")
    args = parser.parse_args()
    args.systems = SYSTEMS
    if Application is None:
        sys.exit("pyeventsourcing is missing: run `uv sync --frozen --all-groups` first")

    started = time.time()
    print(f"preparing databases {OURS_DB!r} and {PEER_DB!r} (dropped and recreated)", flush=True)
    prepare_databases()
    environment = _versions()
    environment["activity_at_start"] = _other_activity()

    points = []
    print("single-event appends", flush=True)
    for writers in WRITERS:
        points += run_point(writers, 1, args)
    print(f"{BATCH}-event appends", flush=True)
    for writers in BATCH_WRITERS:
        points += run_point(writers, BATCH, args)
    print(f"{AGGREGATE_EVENTS}-event aggregate loads (interleaved, {args.loads} each)", flush=True)
    loads = run_loads(args)

    summary = summarize(points, loads)
    environment["activity_at_end"] = _other_activity()
    result = {
        "benchmark": "bench/append.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "round_warmup_s": ROUND_WARMUP,
            "warmup_s": args.warmup,
            "timed_loads": args.loads,
            "streams_per_writer": STREAMS_PER_WRITER,
            "signals_disconnected": args.no_signals,
            "systems": list(args.systems),
        },
        "environment": environment,
        "summary": summary,
        "points": points,
        "loads": loads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(points, summary, args.chart)

    print("\nsummary (events/s: median of rounds; paired = median of same-round ratios)")
    for label, table in (("single", summary["single_event"]), ("batch", summary["batch_100"])):
        for w, row in table.items():
            rates = ", ".join(f"{s} {row[s]:.0f}" for s in args.systems)
            print(f"  {label} x{w}: {rates}")
            ratios = ", ".join(
                f"{m}/{o} {row[f'{m}_over_{o}']} (paired {row[f'paired_{m}_over_{o}']})"
                for m, o in (
                    ("ours", "peer"),
                    ("ours", "ceiling"),
                    ("ours", "ceiling_bin"),
                    ("ours_enc", "peer"),
                    ("ours_enc", "ours"),
                )
            )
            cpu = ", ".join(f"{s} {row['cpu'][s]['total_ms']}" for s in args.systems)
            print(f"      {ratios}; CPU ms/event {cpu}")
    load = summary["load_1000"]
    print(
        f"  load 1000: ours {load['ours_ms']} ms, encrypted {load['ours_enc_ms']} ms, peer "
        f"{load['peer_ms']} ms, floor {load['floor_ms']} ms; peer/ours {load['peer_over_ours']}, "
        f"peer/encrypted {load['peer_over_ours_enc']}"
    )
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
