"""Rebuilding the users projection: our replay vs a bare read loop vs pyeventsourcing.

Run (from the project root; the bench dependency group, ``uv sync --frozen --all-groups``)::

    eval "$(bench/own_postgres.sh start)"           # optional: a cluster of its own
    .venv/bin/python bench/rebuild.py               # 250k, 500k and 1M events
    .venv/bin/python bench/rebuild.py --sizes 20000 --rounds 1   # a quick end-to-end run

It DROPS and recreates the databases ``bench_rebuild`` and ``bench_rebuild_enc`` on
``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``) and fills them stage by
stage (``bench/rebuild_setup.py``): per user one ``UserCreated`` and 2 to 6
``UserUpdated`` in later transactions, 10,000 events per transaction, in the shape
``store.append`` writes them; the encrypted copy holds the same events with email and
names sealed under a key per user. At each stage, in rounds that rotate the order, each
system rebuilds from the first event in a fresh spawned process (its peak RSS its own):

* ours      ``eventstore.replay.replay(subscribers.get("users"), batch_size=2000)`` to
            the end (scratch tables, batches, swap); the read model it leaves is compared
            with the one computed from the events in SQL.
* ours_enc  the same replay on the encrypted copy (every event's personal fields opened).
* ceiling   a bare psycopg loop reading the same pages with the store's feed statement,
            rows fetched, nothing decoded or written.
* peer      pyeventsourcing's ``ProjectionRunner`` with a tracking-recorder view of the
            same table and indexes, for ``--budget`` seconds (it is far too slow for a
            whole million); its rate leaves out its start-up.

Each run records its CPU (process and PostgreSQL backends) and the cores everything else
kept busy meanwhile. Results: ``bench/results/rebuild.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import rebuild_setup as data
from rebuild_setup import DB, DB_ENC, PEER_APP, PEER_SCHEMA, PEER_VIEW, PG_URL, ROOT

SYSTEMS = ("ours", "ours_enc", "ceiling", "peer")
FULL_RUN_LIMIT = 900.0  # seconds: a safety net for the systems that run to the end
_MEASURED = {"db": DB}  # the database whose backends a child's CPU figures count


# --- the peer: pyeventsourcing ----------------------------------------------------------------


def _measure_peer(args: dict, total: int) -> dict[str, Any]:
    from eventsourcing.projection import ProjectionRunner

    probe = data.connect(autocommit=True)
    probe.execute(f"DROP TABLE IF EXISTS {PEER_SCHEMA}.users, {PEER_SCHEMA}.{PEER_VIEW}_tracking")
    classes = data.peer_classes()
    tracking_sql = (
        f"SELECT notification_id FROM {PEER_SCHEMA}.{PEER_VIEW}_tracking "
        "WHERE application_name = %s"
    )
    clock = time.perf_counter
    budget = args["budget"]
    marks = _marks_start(probe)
    start = clock()
    runner = ProjectionRunner(
        application_class=classes["app"],
        projection_class=classes["projection"],
        view_class=classes["view"],
        env=data.peer_env(),
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


def _statement_kind(sql: str) -> str:
    """Which part of a replay a statement run through Django's cursor belongs to."""
    if "pg_snapshot_xmin" in sql:
        return "feed read (reads.read_all)"
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


def _measure_ours(args: dict, total: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.db import connection, connections

    from eventstore import replay, subscribers

    projection = subscribers.get("users")
    statements: dict[str, list[float]] = {}
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

    read = replay._read

    def read_in_reader_thread(*read_args: Any) -> Any:
        """Pages read ahead run on the reader thread's own connection: time them there.

        Its backend disconnects before the end of the run, so its CPU is noted here.
        """
        if threading.current_thread() is threading.main_thread():
            return read(*read_args)  # the tail, inside the swap: the main wrapper times it
        with connections["default"].execute_wrapper(timed):
            try:
                return read(*read_args)
            finally:
                pid = connections["default"].connection.info.backend_pid
                if (used := common.cpu_seconds(pid)) is not None:
                    marks.setdefault("seen", {})[pid] = used

    replay._read = read_in_reader_thread

    monitor = data.connect(autocommit=True)
    state = {"done": 0}

    def progress(count: int) -> None:
        state["done"] += count

    marks = _marks_start(monitor)
    start = time.perf_counter()
    with connection.execute_wrapper(timed):
        result = replay.replay(projection, batch_size=args["batch_size"], progress=progress)
    elapsed = time.perf_counter() - start
    return {
        **_marks_end(marks, monitor),
        "events": state["done"],
        "seconds": elapsed,
        "complete": True,
        "rows": result.rows,
        "statements": {k: {"count": n, "seconds": round(s, 3)} for k, (n, s) in statements.items()},
    }


def _measure_ceiling(args: dict, total: int) -> dict[str, Any]:
    from eventstore.reads import _FEED_SQL  # the SQL text only; Django is not set up

    sql = _FEED_SQL.replace("{filters}", "AND event_type = ANY(%(event_types)s)")
    types = ["UserCreated", "UserDeleted", "UserUpdated", "UserWelcomed"]  # the projection's
    conn = data.connect(autocommit=True)
    monitor = data.connect(autocommit=True)
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
        "rss_start_kb": common.rss_kb(),
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


def _run(system: str, args: dict, total: int) -> dict[str, Any]:
    """One system's rebuild, in the fresh process ``measure`` starts."""
    if system == "ceiling":
        return _measure_ceiling(args, total)
    if system == "peer":
        return _measure_peer(args, total)
    if system == "ours_enc":  # the same replay, on the encrypted copy
        os.environ["DATABASE_URL"] = f"{PG_URL}/{DB_ENC}"
        _MEASURED["db"] = DB_ENC
    return _measure_ours(args, total)


def measure(system: str, args: dict, total: int) -> dict[str, Any]:
    result = common.in_fresh_process(_run, system, args, total, timeout=FULL_RUN_LIMIT + 120)
    result["system"] = system
    result["events_per_s_with_startup"] = round(result["events"] / result["seconds"], 1)
    result["events_per_s"] = (
        result.get("steady_events_per_s") or result["events_per_s_with_startup"]
    )
    return result


# --- the summary --------------------------------------------------------------------------


def _per_event(runs: list[dict], key: str) -> float | None:
    """Microseconds of ``key`` CPU per event, median over the runs."""
    return common.median(
        [r[key] * 1e6 / r["events"] for r in runs if r["events"] and r.get(key) is not None]
    )


def summarize(runs: list[dict], sizes: list[int]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for size in sizes:
        at = [r for r in runs if r["size"] == size]
        row: dict[str, Any] = {}
        for system in SYSTEMS:
            mine = [r for r in at if r["system"] == system]
            if mine:
                row[system] = {
                    "events_per_s": common.median([r["events_per_s"] for r in mine]),
                    "rounds_events_per_s": [r["events_per_s"] for r in mine],
                    "complete": all(r["complete"] for r in mine),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "client_cpu_us_per_event": _per_event(mine, "client_cpu_s"),
                    "backend_cpu_us_per_event": _per_event(mine, "backend_cpu_s"),
                    "other_load_cores": [r["other_load_cores"] for r in mine],
                }

        def paired(a: str, b: str, at: list = at) -> float | None:
            """Median over rounds of a/b measured in the same round."""
            by_round: dict[int, dict[str, float]] = {}
            for r in at:
                by_round.setdefault(r["round"], {})[r["system"]] = r["events_per_s"]
            ratios = [v[a] / v[b] for v in by_round.values() if v.get(a) and v.get(b)]
            return round(statistics.median(ratios), 3) if ratios else None

        for mine, other in (
            ("ours", "peer"), ("ours", "ceiling"), ("ours_enc", "peer"), ("ours_enc", "ours"),
        ):  # fmt: skip
            row[f"{mine}_over_{other}"] = paired(mine, other)
        table[str(size)] = row
    largest = table[str(max(sizes))]

    def rate(system: str) -> float | None:
        found = largest.get(system, {})
        return found.get("events_per_s") if found.get("complete") else None

    rss = [table[str(n)].get("ours", {}).get("peak_rss_mb") for n in sizes]
    rss = [v for v in rss if v]
    targets = [
        ("rebuild >= 20,000 events/s", rate("ours"), 20000),
        ("rebuild, encryption on, >= 20,000 events/s", rate("ours_enc"), 20000),
        ("rebuild >= 5x pyeventsourcing's projection runner", largest.get("ours_over_peer"), 5),
    ]
    return {
        "by_size": table,
        "targets": [
            {"name": f"{n} ({max(sizes):,} events)", "value": v, "target": t,
             "met": v is not None and v >= t}
            for n, v, t in targets
        ] + [{"name": "peak memory flat across sizes", "value": rss,
              "met": bool(rss) and max(rss) <= 1.25 * min(rss)}],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument("--batch-size", type=int, default=2000, help="replay batch size")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds the peer runs")
    parser.add_argument("--rounds", type=int, default=2, help="rounds at the largest size")
    parser.add_argument("--small-rounds", type=int, default=1, help="rounds at the others")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rebuild.json")
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    wanted = set(args.systems.split(","))
    systems = [s for s in SYSTEMS if s in wanted]
    child_args = {"batch_size": args.batch_size, "budget": args.budget}

    started = time.time()
    print(f"preparing databases {DB!r} and {DB_ENC!r} (dropped and recreated)", flush=True)
    data.prepare_database()
    environment = common.versions(PG_URL, ROOT)
    environment["activity_at_start"] = common.activity(PG_URL, (DB, DB_ENC))
    generator = data.Generator()
    stages, runs, checks = [], [], {}
    for size in sizes:
        info = generator.stage(size)
        stages.append(info)
        print(f"stage {size:,}: {info}", flush=True)
        rounds = args.rounds if size == max(sizes) else args.small_rounds
        for round_no in range(rounds):
            shift = round_no % len(systems)
            for system in systems[shift:] + systems[:shift]:
                result = measure(system, child_args, size)
                result.update(size=size, round=round_no)
                runs.append(result)
                print(
                    f"  {size:>9,} round {round_no} {system:9} {result['events_per_s']:>10,.0f} "
                    f"events/s ({result['events']:,} in {result['seconds']:.1f} s); peak RSS "
                    f"{result['peak_rss_mb']} MB; CPU {result['client_cpu_s']} + "
                    f"{result['backend_cpu_s']} s; other load {result['other_load_cores']} cores",
                    flush=True,
                )
                key = f"{size}/{system}"
                if system in ("ours", "ours_enc") and key not in checks:
                    checks[key] = data.check_read_model(DB_ENC if system == "ours_enc" else DB)
                    print(f"    read model check: {checks[key]}", flush=True)

    summary = summarize(runs, sizes)
    environment["activity_at_end"] = common.activity(PG_URL, (DB, DB_ENC))
    loads = [r["other_load_cores"] for r in runs]
    common.write_result(args.out, {
        "benchmark": "bench/rebuild.py",
        "command": " ".join(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {**vars(args), "sizes": sizes, "systems": systems, "out": str(args.out)},
        "environment": environment,
        "other_load_cores": f"{min(loads)}-{max(loads)}, median {statistics.median(loads)}",
        "stages": stages,
        "read_model_checks": checks,
        "summary": summary,
        "runs": runs,
    })  # fmt: skip

    print("\nsummary (events/s: median of rounds; ratios paired by round)")
    for size, row in summary["by_size"].items():
        rates = ", ".join(f"{s} {row[s]['events_per_s']:,.0f}" for s in systems if s in row)
        ratios = ", ".join(f"{k} {v}" for k, v in row.items() if "_over_" in k)
        print(f"  {int(size):>9,}: {rates}\n             {ratios}")
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"other load {min(loads)}-{max(loads)} cores; wrote {args.out}")


if __name__ == "__main__":
    main()
