"""Partitions: a slow projection works off a backlog with 1 partition, then with 4.

Run (one command, from the project root, about 3 minutes)::

    .venv/bin/python bench/partitions.py

It needs PostgreSQL at ``postgres://postgres@127.0.0.1:5432`` (``BENCH_PG_URL``; best a
cluster of its own, ``bench/own_postgres.sh``) and Redis at ``redis://127.0.0.1:6379``
(``BENCH_REDIS_URL``). It DROPS and recreates the database ``bench_partitions``, migrates
it and FLUSHES Redis database 9.

The projection (``bench/slow_projection.py``, registered by the settings module
``bench/partitions_settings.py`` only) waits ``--handler-ms`` (5 ms) per event, standing in
for a call to another service, and writes one upsert per batch. The backlog:
``--events`` (20,000) ``test.Noted`` events over ``--streams`` (2,000) streams, appended
through the event store before any worker runs. Then, for each partition count of
``--partitions`` (``1,4``): the projection's checkpoints and table are emptied, a real
Celery worker of the service is started on the default queue with as many pool processes
as partitions and ``SUBSCRIBER_PARTITIONS=bench-slow=<n>``, and once it says it is ready
every partition is woken, as an append would. Measured: from the wake-ups to the last
checkpoint reaching the end of the backlog. The 1-partition run is the reference for the
others (speed-up = its time / theirs); ``events x handler time`` is the floor of one
process. It checks that every stream's events took effect once each and in order.
Results go to ``bench/results/partitions.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)
import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB, REDIS_DB = "bench_partitions", 9
NAME = "bench-slow"
ENV = {
    "DJANGO_SETTINGS_MODULE": "partitions_settings",
    "DATABASE_URL": f"{PG_URL}/{DB}",
    "REDIS_URL": f"{REDIS_BASE}/{REDIS_DB}",
    "DEBUG": "false",
    "LOG_LEVEL": "WARNING",
    "CACHE_KEY_PREFIX": "bench-partitions",
    "PYTHONPATH": f"{ROOT}:{BENCH}",
}


def prepare(events: int, streams: int) -> None:
    """A fresh database with the backlog in it, appended as the service appends."""
    common.recreate_database(PG_URL, DB)
    os.environ.update(ENV)
    env = {**os.environ}
    import subprocess

    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True
    )
    import django

    django.setup()
    from django.db import connection

    from eventstore import store
    from tests.events import Noted

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_slow (stream_id text PRIMARY KEY, count int, "
            "first_version int, last_version int, in_order bool)"
        )
    per_stream = events // streams
    for _ in range(streams):
        store.append(f"noted-{uuid.uuid4()}", [Noted(text="x", n=i) for i in range(per_stream)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE events")
    connection.close()
    common.flush_redis(ENV["REDIS_URL"])  # the appends' wake-ups: no worker may start early


def run(partitions: int, expected: int, workdir: Path) -> dict[str, Any]:
    """Start a worker of ``partitions`` processes, wake every partition, time the catch-up."""
    with common.connect(PG_URL, DB, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints WHERE name = %s", [NAME])
        conn.execute("TRUNCATE bench_slow")
    common.flush_redis(ENV["REDIS_URL"])
    log = workdir / f"worker-{partitions}.log"
    # INFO for the worker: its " ready." line is how this script knows it consumes.
    env = {
        **os.environ,
        **ENV,
        "LOG_LEVEL": "INFO",
        "SUBSCRIBER_PARTITIONS": f"{NAME}={partitions}",
    }
    cmd = common.celery_worker_cmd(sys.executable, "celery", partitions, name=f"p{partitions}")
    worker = common.start(cmd, env, log, ROOT)
    try:
        common.wait_for_text(log, " ready.")
        from eventstore import wakeups

        with common.connect(PG_URL, DB, autocommit=True) as conn:
            shares = dict(
                conn.execute(
                    "SELECT bucket %% %s, count(*) FROM events GROUP BY 1", [partitions]
                ).fetchall()
            )
        load_before = common.loadavg()
        cpu0 = common.tree_cpu_seconds(worker.pid)
        started = time.monotonic()
        wakeups.wake([(NAME, p) for p in range(partitions)])
        done: dict[int, float] = {}
        counts: dict[int, int] = {}
        with common.connect(PG_URL, DB, autocommit=True) as conn:
            while len(done) < partitions:
                counts = dict(
                    conn.execute(
                        "SELECT partition, events_processed FROM checkpoints WHERE name = %s",
                        [NAME],
                    ).fetchall()
                )
                for number, count in counts.items():
                    if number not in done and count >= shares[number]:
                        done[number] = time.monotonic() - started
                if time.monotonic() - started > 900:
                    raise RuntimeError(f"{partitions} partition(s): not done in 900 s: {counts}")
                time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = common.tree_cpu_seconds(worker.pid) - cpu0
        with common.connect(PG_URL, DB, autocommit=True) as conn:
            check = conn.execute(
                "SELECT count(*), sum(count), count(*) FILTER (WHERE in_order AND "
                "first_version = 0 AND last_version = count - 1) FROM bench_slow"
            ).fetchone()
    finally:
        common.stop(worker)
    return {
        "partitions": partitions,
        "worker_processes": partitions,
        "seconds": round(elapsed, 2),
        "events_per_s": round(expected / elapsed, 1),
        "partition_seconds": {p: round(t, 2) for p, t in sorted(done.items())},
        "worker_cpu_s": round(cpu, 2),
        "streams": check[0],
        "events_applied": check[1],
        "streams_once_in_order": check[2],
        "load_before": load_before,
        "load_after": common.loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=2_000)
    parser.add_argument("--handler-ms", type=float, default=5.0)
    parser.add_argument(
        "--partitions", default="1,4", help="counts to run, the first is the reference"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "partitions.json")
    args = parser.parse_args()
    counts = [int(x) for x in args.partitions.split(",")]
    os.environ["BENCH_HANDLER_SECONDS"] = str(args.handler_ms / 1000)
    events = args.events // args.streams * args.streams
    print(f"preparing {DB!r} with {events} events in {args.streams} streams; Redis db {REDIS_DB}")
    prepare(events, args.streams)
    workdir = Path(tempfile.mkdtemp(prefix="bench-partitions-"))
    runs = []
    for n in counts:
        runs.append(run(n, events, workdir))
        r = runs[-1]
        print(
            f"  {n} partition(s) on {n} worker process(es): {r['seconds']} s "
            f"({r['events_per_s']} events/s), partitions done at {r['partition_seconds']}; "
            f"{r['streams_once_in_order']}/{r['streams']} streams once and in order; "
            f"load {r['load_before']} -> {r['load_after']}",
            flush=True,
        )
    reference = runs[0]
    floor = events * args.handler_ms / 1000
    for r in runs:
        r["speedup"] = round(reference["seconds"] / r["seconds"], 2)
        r["of_one_process_floor"] = round(floor / r["seconds"], 2)
    targets = [
        {"name": f"{r['partitions']} partitions at least 3x faster than 1",
         "value": r["speedup"], "met": r["speedup"] >= 3}
        for r in runs[1:] if r["partitions"] == 4
    ] + [
        {"name": "every event once and in order, every run",
         "value": [r["streams_once_in_order"] for r in runs],
         "met": all(r["streams_once_in_order"] == args.streams and r["events_applied"] == events
                    for r in runs)},
    ]  # fmt: skip
    result = {
        "benchmark": "bench/partitions.py",
        "git_commit": common.git_commit(ROOT),
        "cpus": os.cpu_count(),
        "settings": {"events": events, "streams": args.streams, "handler_ms": args.handler_ms},
        "one_process_floor_s": floor,
        "runs": runs,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  floor of one process (events x handler time): {floor:.1f} s")
    for r in runs:
        print(f"  {r['partitions']}: {r['seconds']} s, {r['speedup']}x the 1-partition run")
    for t in targets:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out}; worker logs in {workdir}")


if __name__ == "__main__":
    main()
