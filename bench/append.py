"""Appends and aggregate loads: our event store vs the raw SQL ceiling vs pyeventsourcing.

Run (from the project root; the bench dependency group, ``uv sync --frozen --all-groups``)::

    eval "$(bench/own_postgres.sh start)"     # optional: a cluster of its own
    .venv/bin/python bench/append.py          # about 5 minutes
    .venv/bin/python bench/append.py --rounds 2 --seconds 0.5 --loads 5   # quick check

It DROPS and recreates the databases ``bench`` (ours and the ceiling, migrated) and
``bench_peer`` (pyeventsourcing's tables) on ``BENCH_PG_URL`` (default
``postgres://postgres@127.0.0.1:5432``). Each writer is a process of its own (threads
would measure the GIL) with its own connection and 50 streams, round-robin:

* ours         ``eventstore.store.append(stream_id, [event], expected_version)``, exact
               expected version; an event without personal fields (encryption off).
* ours_enc     the same with the event's ``name`` and ``note`` personal, each stream its
               own data subject: every append seals them, every load opens them.
* ceiling      the store's own SQL (``_APPEND_SQL["exact"]``) on a plain psycopg
               connection, values pre-encoded, parameters as text (psycopg's default).
* ceiling_bin  the same with binary parameters (``%b``), as the store sends them.
* peer         pyeventsourcing's ``Application`` on PostgreSQL: ``app.save(aggregate)``.

Points: single-event appends at 1, 4 and 8 writers, 100-event appends at 1 and 4; then
loads of a 1,000-event aggregate (``Repository.load`` vs ``app.repository.get``, and a
plain SELECT of the rows as the floor), interleaved, median of ``--loads``. At each point
every system's writers are started and warmed up, then ``--rounds`` rounds each run every
system in turn for ``--seconds`` (rotating the order; the others wait on a barrier), so
noise on the shared machine hits all of them. A figure is the median of its rounds,
"paired" the median of same-round ratios; the CPU per event of the writers and their
PostgreSQL backends is recorded too. Results: ``bench/results/append.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import append_systems as systems
import common
from append_systems import (
    AGGREGATE_EVENTS,
    BATCH,
    OURS_DB,
    PEER_DB,
    PG_URL,
    ROOT,
)

WRITERS = (1, 4, 8)
BATCH_WRITERS = (1, 4)
SYSTEMS = ("ceiling", "ceiling_bin", "ours", "ours_enc", "peer")
CPUS = os.cpu_count() or 1
ROUND_WARMUP = 0.3  # seconds each writer runs unmeasured at the start of every round


def _writer_process(system, idx, batch, args, barrier, queue) -> None:
    """Set up, warm up, say ready, then run one measured window per round."""
    try:
        op, backend_pid = systems.WRITER_FACTORIES[system](idx, batch, args.no_signals)
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


# --- orchestration (the parent never sets up Django) -------------------------------------------


def _activity() -> dict:
    return common.activity(PG_URL, (OURS_DB, PEER_DB))


def prepare_databases() -> None:
    common.admin_sql(
        PG_URL,
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
    app = systems.Application(
        env=systems.peer_env(create_table=True)
    )  # creates the peer's tables once
    app.close()


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return round(statistics.median(values), 4) if values else None


def run_point(writers: int, batch: int, args) -> list[dict]:
    """All three systems at one (writers, batch) point, in interleaved rounds.

    Every system's writers are started, set up and warmed up first; then each round runs
    one system at a time (the others idle on their barrier), rotating the order, so a
    slow spell on this shared machine hits all three instead of one.
    """
    common.admin_sql(PG_URL, "CHECKPOINT")  # every point starts with no checkpoint debt
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
                ROUND_WARMUP + args.seconds / 2, lambda a=activity: a.update(_activity())
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
            "latency_ms_p50": round(common.percentile(latencies, 0.5) * 1000, 3),
            "latency_ms_p99": round(common.percentile(latencies, 0.99) * 1000, 3),
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
    result = common.in_fresh_process(systems.timed_loads, args, timeout=600)
    out = {"events": AGGREGATE_EVENTS, "loads": args.loads, "stream_id": result["stream_id"]}
    for name, times in result["times_ms"].items():
        times = sorted(times)
        out[name] = {
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(times[0], 3),
            "p90_ms": round(common.percentile(times, 0.9), 3),
        }
        print(
            f"  {name:16} {AGGREGATE_EVENTS} events: median {out[name]['median_ms']:.2f} ms "
            f"(min {out[name]['min_ms']:.2f}, p90 {out[name]['p90_ms']:.2f})",
            flush=True,
        )
    return out


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
    args = parser.parse_args()
    args.systems = SYSTEMS
    if systems.Application is None:
        sys.exit("pyeventsourcing is missing: run `uv sync --frozen --all-groups` first")

    started = time.time()
    print(f"preparing databases {OURS_DB!r} and {PEER_DB!r} (dropped and recreated)", flush=True)
    prepare_databases()
    environment = common.versions(PG_URL, ROOT)
    environment["activity_at_start"] = _activity()

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
    environment["activity_at_end"] = _activity()
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
            "streams_per_writer": systems.STREAMS_PER_WRITER,
            "signals_disconnected": args.no_signals,
            "systems": list(args.systems),
        },
        "environment": environment,
        "summary": summary,
        "points": points,
        "loads": loads,
    }
    common.write_result(args.out, result)

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
    print(f"wrote {args.out} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
