"""End-to-end lag: from an append's commit to the users read model, with 1 partition and 2.

Run (one command, from the project root, about 4 minutes)::

    eval "$(bench/own_postgres.sh start)"   # a cluster of its own: no one else's horizon
    .venv/bin/python bench/lag.py

It needs PostgreSQL at ``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``,
trust auth) and Redis at ``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). For each
partition count of the users projection in ``--partitions`` (default ``1,2``), in turn and
in the same run, it DROPS and recreates the database ``bench_lag``, migrates it, FLUSHES
Redis database 10 and starts the Celery processes as ``scripts/up.sh`` does (the
default-queue worker with its prefork pool, one process per core; the ``mail``-queue
worker on 20 threads; beat), all with ``SUBSCRIBER_PARTITIONS=users=<n>``; it stops them
at the end of each run. Emails go to Django's dummy backend.

The load: ``--writers`` processes (default 4) issue commands through ``users.handlers``
(what the API's views call) on an open-loop schedule adding up to ``--rate`` appends/s
(default 200): 25% ``CreateUser``, 75% ``UpdateUser`` of a user the writer created (each
command is one append). The welcome saga runs as in production (``UserWelcomed`` one
``WELCOME_DELAY_SECONDS`` later, 1 s by default).

What is measured, per append: the commit time (a ``transaction.on_commit`` callback
registered before the store's own, so it fires first, right after COMMIT returns) and
the time a poller process first sees it, polling every ``--poll-ms`` (2 ms), in one
snapshot:

* read model  ``users_user`` row of the user at the appended version or later
              (what ``GET /v1/users/{id}`` would return);
* floor       the event itself in ``events``: the same write read back directly. This is
              what the measurement costs (queue hand-off + poll interval + query), the
              floor under any read-model lag, and the reference of the same run.

A lag is (poll that first saw it) - (commit). A monitor samples, every 20 ms, the oldest
write transaction open in any database of the server (the feed only reads below
``pg_snapshot_xmin``, so another client's long transaction holds every subscriber back)
and the Celery queue's length. After ``--warmup`` s, ``--rounds`` windows of ``--seconds``
are reported. Results go to ``bench/results/lag.json`` (gitignored), the chart to
``docs/img/lag.png``.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import queue as queue_module
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_lag"
REDIS_DB = 10
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ["DATABASE_URL"] = f"{PG_URL}/{DB}"
os.environ["REDIS_URL"] = f"{REDIS_BASE}/{REDIS_DB}"
os.environ["DEBUG"] = "false"
os.environ.setdefault("DJANGO_ENV", "development")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["CACHE_KEY_PREFIX"] = "bench-lag"
os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.dummy.EmailBackend"
# Keys of personal data for this run only (the service refuses to store personal data
# without them; scripts/up.sh makes development ones for the service it starts).
os.environ.setdefault("PERSONAL_DATA_MASTER_KEYS", base64.b64encode(os.urandom(32)).decode())
os.environ.setdefault("PERSONAL_DATA_HMAC_KEY", base64.b64encode(os.urandom(32)).decode())

SEED_USERS = 600  # created (and welcomed) before the load, split between the writers
DRAIN_TIMEOUT = 15.0  # seconds to wait, after the load, for the last appends to show
_percentile, _stats_ms = common.percentile, common.stats_ms


def _connect(dbname: str = DB, **kwargs: Any) -> Any:
    return common.connect(PG_URL, dbname, **kwargs)


# --- writers ----------------------------------------------------------------------------------


def _writer(idx: int, args: dict, go, start, appends, results) -> None:
    """Seed users, then run the open-loop schedule; every append goes to the poller."""
    try:
        import django

        django.setup()
        from django.db import transaction

        from eventstore.context import message_context
        from users import handlers
        from users.commands import CreateUser, UpdateUser

        rng = random.Random(idx)
        run = args["run_id"]
        users: list[uuid.UUID] = []
        counter = [0]

        def create_command() -> CreateUser:
            counter[0] += 1
            user_id = uuid.uuid4()
            users.append(user_id)
            return CreateUser(
                user_id=user_id,
                email=f"lag-{run}-w{idx}-{counter[0]}@example.com",
                first_name=f"Writer{idx}",
                last_name=f"Number{counter[0]}",
            )

        def run_command(command: Any) -> tuple[float, Any]:
            commit = {}
            with message_context(actor="user:bench-lag"), transaction.atomic():
                # Registered before the store's own callback (wake-up publish): fires first.
                transaction.on_commit(lambda: commit.setdefault("t", time.monotonic()))
                result = handlers.handle(command)
            return commit["t"], result

        for _ in range(SEED_USERS // args["writers"]):
            run_command(create_command())
        results.put({"writer": idx, "seeded": len(users)})
        go.wait(timeout=300)
        start_at = start.value

        rate = args["rate"] / args["writers"]
        interval = 1.0 / rate
        end = start_at + args["warmup"] + args["rounds"] * args["seconds"]
        offset = idx * interval / args["writers"]  # writers interleave, not in phase
        while time.monotonic() < start_at:
            time.sleep(0.001)
        k = 0
        late: list[float] = []
        ops = 0
        while True:
            due = start_at + offset + k * interval
            if due >= end:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late.append(now - due)
            if rng.random() < args["create_share"]:
                command = create_command()
                kind = "create"
            else:
                command = UpdateUser(
                    user_id=rng.choice(users), first_name=f"Renamed{idx}-{k}-{rng.random():.6f}"
                )
                kind = "update"
            commit_t, result = run_command(command)
            appends.put(
                (idx, k, kind, str(command.user_id), result.version, result.position, commit_t)
            )
            ops += 1
            k += 1
        results.put(
            {
                "writer": idx,
                "ops": ops,
                "late_p99_ms": round((_percentile(late, 0.99) or 0) * 1000, 2),
                "late_share": round(len(late) / max(1, k), 3),
                "cpu_s": round(common.cpu_seconds(), 2),
            }
        )
    except BaseException:
        results.put({"writer": idx, "error": traceback.format_exc()})


# --- the poller -------------------------------------------------------------------------------

_POLL_SQL = """
SELECT 'e', stream_id, max(version) FROM events WHERE stream_id = ANY(%(streams)s)
GROUP BY stream_id
UNION ALL
SELECT 'u', 'user-' || id, version FROM users_user WHERE id = ANY(%(ids)s::uuid[])
"""


def _poller(args: dict, appends, stop, results) -> None:
    """Every poll interval: which pending appends are visible in events / users_user."""
    try:
        conn = _connect(autocommit=True)
        pending_floor: dict[str, list[tuple[int, tuple]]] = {}
        pending_model: dict[str, list[tuple[int, tuple]]] = {}
        samples: list[dict[str, Any]] = []
        interval = args["poll_ms"] / 1000
        polls = 0
        cpu0 = common.cpu_seconds()
        backend = conn.info.backend_pid
        backend0 = common.cpu_seconds(backend)
        drain_deadline = None
        while True:
            while True:
                try:
                    item = appends.get_nowait()
                except queue_module.Empty:
                    break
                stream = f"user-{item[3]}"
                sample = {
                    "writer": item[0],
                    "seq": item[1],
                    "kind": item[2],
                    "version": item[4],
                    "position": item[5],
                    "commit": item[6],
                    "floor": None,
                    "model": None,
                }
                samples.append(sample)
                pending_floor.setdefault(stream, []).append((item[4], sample))
                pending_model.setdefault(stream, []).append((item[4], sample))
            if stop.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                if (not pending_floor and not pending_model) or time.monotonic() > drain_deadline:
                    break
            if not pending_floor and not pending_model:
                time.sleep(interval)
                continue
            t = time.monotonic()
            rows = conn.execute(
                _POLL_SQL,
                {
                    "streams": list(pending_floor),
                    "ids": [s.split("-", 1)[1] for s in pending_model],
                },
            ).fetchall()
            polls += 1
            for which, stream, version in rows:
                pending = pending_floor if which == "e" else pending_model
                key = "floor" if which == "e" else "model"
                waiting = pending.get(stream)
                if not waiting:
                    continue
                keep = []
                for expected, sample in waiting:
                    if version >= expected:
                        sample[key] = t - sample["commit"]
                    else:
                        keep.append((expected, sample))
                if keep:
                    pending[stream] = keep
                else:
                    del pending[stream]
            pause = interval - (time.monotonic() - t)
            if pause > 0:
                time.sleep(pause)
        results.put(
            {
                "poller": True,
                "samples": samples,
                "polls": polls,
                "cpu_s": round(common.cpu_seconds() - cpu0, 2),
                "backend_cpu_s": round((common.cpu_seconds(backend) or 0) - (backend0 or 0), 2),
                "never_seen_in_read_model": sum(len(v) for v in pending_model.values()),
                "never_seen_in_events": sum(len(v) for v in pending_floor.values()),
            }
        )
    except BaseException:
        results.put({"poller": True, "error": traceback.format_exc()})


# --- the monitor: open write transactions anywhere on the server -----------------------------

_OLDEST_SQL = f"""
SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)
                        FILTER (WHERE datname IS DISTINCT FROM '{DB}')), 0),
       coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)
                        FILTER (WHERE datname = '{DB}')), 0)
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
"""


def _monitor(stop, results) -> None:
    """Every 20 ms: the oldest open write transactions, and the Celery queue's length."""
    try:
        import redis

        conn = _connect("postgres", autocommit=True)
        broker = redis.Redis.from_url(os.environ["REDIS_URL"])
        series = []
        while not stop.is_set():
            t = time.monotonic()
            foreign, own = conn.execute(_OLDEST_SQL).fetchone()
            series.append((t, float(foreign), float(own), broker.llen("celery")))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
        results.put({"monitor": True, "series": series})
    except BaseException:
        results.put({"monitor": True, "error": traceback.format_exc()})


# --- the service: Celery workers and beat, as scripts/up.sh starts them ----------------------


def start_celery(workdir: Path) -> dict[str, Any]:
    # INFO for the workers: their " ready." line is how this script knows they consume.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "INFO"}
    py = sys.executable
    commands = {
        "worker": common.celery_worker_cmd(py, "celery", os.cpu_count() or 1),
        "mail": common.celery_worker_cmd(py, "mail", 20, pool="threads", name="mail"),
        "beat": [py, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                 "--schedule", str(workdir / "celerybeat-schedule")],
    }  # fmt: skip
    procs = {
        name: common.start(cmd, env, workdir / f"{name}.log", ROOT)
        for name, cmd in commands.items()
    }
    try:
        for name in ("worker", "mail"):
            common.wait_for_text(workdir / f"{name}.log", " ready.")
    except BaseException:
        for proc in procs.values():
            common.stop(proc)
        raise
    return procs


def wait_until(sql: str, expected: int, timeout: float, what: str) -> float:
    started = time.monotonic()
    with _connect(autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            if conn.execute(sql).fetchone()[0] >= expected:
                return time.monotonic() - started
            time.sleep(0.2)
    raise RuntimeError(f"not {what} within {timeout} s")


def prepare() -> None:
    common.recreate_database(PG_URL, DB)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
        cwd=ROOT, env=os.environ.copy(), check=True,
    )  # fmt: skip
    common.flush_redis(os.environ["REDIS_URL"])


# --- analysis ---------------------------------------------------------------------------------


def analyse(samples: list[dict], series: list, start_at: float, args) -> dict[str, Any]:
    windows = []
    t0 = start_at + args.warmup
    for r in range(args.rounds + 1):
        lo = t0 + r * args.seconds if r < args.rounds else t0
        hi = lo + (args.seconds if r < args.rounds else args.rounds * args.seconds)
        mine = [s for s in samples if lo <= s["commit"] < hi]
        moments = [x for x in series if lo <= x[0] < hi]
        windows.append(
            {
                "round": r if r < args.rounds else "all",
                "appends": len(mine),
                "appends_per_s": round(len(mine) / (hi - lo), 1),
                "read_model": _stats_ms([s["model"] for s in mine if s["model"] is not None]),
                "floor": _stats_ms([s["floor"] for s in mine if s["floor"] is not None]),
                "not_seen_in_read_model": sum(1 for s in mine if s["model"] is None),
                "oldest_foreign_write_xact_ms_max": round(
                    max((x[1] for x in moments), default=0) * 1000, 1
                ),
                "oldest_own_write_xact_ms_max": round(
                    max((x[2] for x in moments), default=0) * 1000, 1
                ),
                "celery_queue_max": max((x[3] for x in moments), default=0),
                "celery_queue_median": statistics.median([x[3] for x in moments] or [0]),
            }
        )
    return {"overall": windows[-1], "rounds": windows[:-1]}


def chart(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for i, run in enumerate(runs):
        color, label = colors[i % 4], f"{run['partitions']} partition(s)"
        measured = [s for s in run["samples"] if s["model"] is not None]
        axes[0].scatter([s["t"] for s in measured], [s["model"] * 1000 for s in measured],
                        s=2, alpha=0.4, color=color, label=label)  # fmt: skip
        values = sorted(s["model"] * 1000 for s in measured)
        if values:
            axes[1].plot(values, [k / len(values) for k in range(len(values))], color=color,
                         label=label)  # fmt: skip
        floor = sorted(s["floor"] * 1000 for s in run["samples"] if s["floor"] is not None)
        if floor:
            axes[1].plot(floor, [k / len(floor) for k in range(len(floor))], color=color,
                         linestyle=":", label=f"floor, {label}")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, markerscale=4)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("seconds into the measurement")
    axes[0].set_ylabel("commit -> read model (ms, log scale)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("lag from commit (ms, log scale)")
    axes[1].set_ylabel("share of appends")
    fig.suptitle("Users projection lag at 200 appends/s (targets: p50 50 ms, p99 100 ms)")
    common.save_chart(fig, path)


# --- one run ----------------------------------------------------------------------------------


def run_one(partitions: int, args) -> dict[str, Any]:
    """Everything for one partition count: a fresh database, the workers, seed, load."""
    os.environ["SUBSCRIBER_PARTITIONS"] = f"users={partitions}"  # workers and writers
    print(f"{partitions} partition(s): preparing {DB!r} and Redis db {REDIS_DB}", flush=True)
    prepare()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lag-"))
    procs = start_celery(workdir)
    ctx = mp.get_context("spawn")
    appends, results, stop, go = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    start = ctx.Value("d", 0.0)
    children = []
    try:
        child_args = {
            "rate": args.rate,
            "writers": args.writers,
            "create_share": args.create_share,
            "warmup": args.warmup,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "poll_ms": args.poll_ms,
            "run_id": uuid.uuid4().hex[:8],
        }
        children = [
            ctx.Process(target=_poller, args=(child_args, appends, stop, results)),
            ctx.Process(target=_monitor, args=(stop, results)),
            *(
                ctx.Process(target=_writer, args=(i, child_args, go, start, appends, results))
                for i in range(args.writers)
            ),
        ]
        for child in children:
            child.start()
        seeded = 0
        for _ in range(args.writers):
            message = results.get(timeout=300)
            if "error" in message:
                raise RuntimeError(message["error"])
            seeded += message["seeded"]
        wait_until("SELECT count(*) FROM users_user", seeded, 120, "projected the seed")
        wait_until(
            "SELECT count(*) FROM sagas_instance WHERE status = 'completed'",
            seeded, 180, "welcomed the seed",
        )  # fmt: skip
        start_at = start.value = time.monotonic() + 1.0
        go.set()
        load_start = common.loadavg()
        total = args.warmup + args.rounds * args.seconds
        print(f"  load: {args.rate:.0f} appends/s for {total:.0f} s; load {load_start}", flush=True)
        writer_reports, poller_report, monitor_report = [], None, None
        while len(writer_reports) < args.writers:
            message = results.get(timeout=4 * total + 300)  # writers late on a busy machine
            if "error" in message:
                raise RuntimeError(message["error"])
            writer_reports.append(message)
        load_end = common.loadavg()
        stop.set()
        while poller_report is None or monitor_report is None:
            message = results.get(timeout=DRAIN_TIMEOUT + 60)
            if "error" in message:
                raise RuntimeError(message["error"])
            if message.get("poller"):
                poller_report = message
            elif message.get("monitor"):
                monitor_report = message
        for child in children:
            child.join(timeout=30)
    finally:
        stop.set()
        for proc in procs.values():
            common.stop(proc)
        for child in children:
            if child.is_alive():
                child.terminate()
    log = (workdir / "worker.log").read_text(errors="replace")
    # Console lines say "[error ]", JSON lines '"level": "error"'.
    errors = log.count("[error") + log.count('"level": "error"')
    if not errors:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = analyse(poller_report["samples"], monitor_report["series"], start_at, args)
    t0 = start_at + args.warmup
    t1 = t0 + args.rounds * args.seconds
    return {
        "partitions": partitions,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "worker_log_errors": errors,
        "writers_late_p99_ms": max(r["late_p99_ms"] for r in writer_reports),
        "writers_late_share": max(r["late_share"] for r in writer_reports),
        **summary,
        "samples": [
            {"t": round(s["commit"] - t0, 4), "model": s["model"], "floor": s["floor"]}
            for s in poller_report["samples"]
            if t0 <= s["commit"] < t1
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", default="1,2", help="users projection partition counts")
    parser.add_argument("--rate", type=float, default=200.0, help="appends/s, all writers")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--create-share", type=float, default=0.25)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lag.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "lag.png")
    args = parser.parse_args()

    started = time.time()
    runs = []
    for n in (int(x) for x in args.partitions.split(",")):
        runs.append(run_one(n, args))
        o = runs[-1]["overall"]
        for r in [*runs[-1]["rounds"], o]:
            print(
                f"  round {r['round']}: {r['appends_per_s']}/s; read model p50 "
                f"{r['read_model']['p50_ms']} p99 {r['read_model']['p99_ms']} max "
                f"{r['read_model']['max_ms']} ms; floor p50 {r['floor']['p50_ms']} p99 "
                f"{r['floor']['p99_ms']} ms; oldest foreign/own write xact "
                f"{r['oldest_foreign_write_xact_ms_max']}/{r['oldest_own_write_xact_ms_max']} ms;"
                f" Celery queue max {r['celery_queue_max']}; unseen {r['not_seen_in_read_model']}"
            )
        print(
            f"  load average {runs[-1]['load_average_start']} -> {runs[-1]['load_average_end']};"
            f" writers late p99 {runs[-1]['writers_late_p99_ms']} ms"
        )
    targets = []
    for run in runs:
        o = run["overall"]
        p50, p99 = o["read_model"]["p50_ms"], o["read_model"]["p99_ms"]
        targets += [
            {"name": f"{run['partitions']}: p50 < 50 ms", "value": p50,
             "met": p50 is not None and p50 < 50},
            {"name": f"{run['partitions']}: p99 < 100 ms", "value": p99,
             "met": p99 is not None and p99 < 100},
            {"name": f"{run['partitions']}: every append reached the read model",
             "value": o["not_seen_in_read_model"], "met": o["not_seen_in_read_model"] == 0},
        ]  # fmt: skip
    result = {
        "benchmark": "bench/lag.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "git_commit": common.git_commit(ROOT),
        "cpus": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "chart")},
        "targets": targets,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, default=str) + "\n")
    chart(runs, args.chart)
    for t in targets:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
