"""End-to-end lag: from an append's commit to the users read model, under steady load.

Run (one command, from the project root, about 2 minutes)::

    .venv/bin/python bench/lag.py

It needs PostgreSQL at ``postgres://postgres@127.0.0.1:5432`` (trust auth; ``BENCH_PG_URL``
for another server) and Redis at ``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). It DROPS
and recreates the database ``bench_lag``, migrates it, FLUSHES Redis database 10 (its own),
and starts the real Celery worker and beat as up.sh does (``celery -A config worker`` with
its default prefork pool, one process per core, and ``celery -A config beat``) on them;
it stops both at the end.

The load: ``--writers`` processes (default 2) issue commands through ``users.handlers``
(what the API's views call) on an open-loop schedule adding up to ``--rate`` appends/s
(default 200): 25% ``CreateUser``, 75% ``UpdateUser`` of a user the writer created (each
command is one append). The welcome saga runs as in production (it appends
``UserWelcomed`` one ``WELCOME_DELAY_SECONDS`` later, 1 s by default).

What is measured, per append: the commit time (a ``transaction.on_commit`` callback
registered before the store's own, so it fires first, right after COMMIT returns) and
the time a poller process first sees it. The poller runs one statement every
``--poll-ms`` (2 ms) for the appends not yet seen, in one snapshot:

* read model  ``users_user`` row of the user at the appended version or later
              (what ``GET /v1/users/{id}`` would return);
* floor       the event itself in ``events``: the same write read back directly. This is
              what the measurement costs (queue hand-off + poll interval + query), the
              floor under any read-model lag.

A lag is (poll that first saw it) - (commit), an upper bound with at most one poll
interval of slack, the same slack for both lines. A monitor samples, every 20 ms, the
oldest write transaction open in ANY database of the server: the feed only reads below
``pg_snapshot_xmin``, so another client's long transaction holds every subscriber back.
After ``--warmup`` s, ``--rounds`` windows of ``--seconds`` each are reported separately.
Results go to ``bench/results/lag.json`` (gitignored), the chart to ``docs/img/lag.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import random
import shutil
import signal
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

CPUS = os.cpu_count() or 1
SEED_USERS = 600  # created (and welcomed) before the load, split between the writers
DRAIN_TIMEOUT = 15.0  # seconds to wait, after the load, for the last appends to show


def _pg_params(dbname: str = DB) -> dict[str, Any]:
    return common.pg_params(PG_URL, dbname)


def _connect(dbname: str = DB, **kwargs: Any) -> Any:
    return common.connect(PG_URL, dbname, **kwargs)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _stats_ms(values: list[float]) -> dict[str, Any]:
    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 2)

    return {
        "count": len(values),
        "p50_ms": ms(_percentile(values, 0.50)),
        "p90_ms": ms(_percentile(values, 0.90)),
        "p99_ms": ms(_percentile(values, 0.99)),
        "max_ms": ms(max(values) if values else None),
        "mean_ms": ms(statistics.fmean(values) if values else None),
    }


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
                        FILTER (WHERE datname = '{DB}')), 0),
       string_agg(DISTINCT coalesce(datname, '?'), ',')
           FILTER (WHERE clock_timestamp() - xact_start > interval '50 milliseconds')
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
        composition: list[dict[str, Any]] = []
        next_census = time.monotonic()
        while not stop.is_set():
            t = time.monotonic()
            foreign, own, databases = conn.execute(_OLDEST_SQL).fetchone()
            queued = broker.llen("celery")
            series.append((t, float(foreign), databases, float(own), queued))
            if t >= next_census:  # which tasks wait in the queue (every 2 s, first 2,000)
                next_census = t + 2.0
                names: dict[str, int] = {}
                for raw in broker.lrange("celery", 0, 1999):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        headers = json.loads(raw)["headers"]
                        name = headers["task"].rsplit(".", 1)[-1]
                        if name == "run_subscriber":
                            name += f"({headers.get('argsrepr', '')})"
                        names[name] = names.get(name, 0) + 1
                composition.append({"t": t, "length": queued, "tasks": names})
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
        results.put({"monitor": True, "series": series, "composition": composition})
    except BaseException:
        results.put({"monitor": True, "error": traceback.format_exc()})


# --- the service: Celery worker and beat --------------------------------------------------------


def _service_env(mail_dir: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        PYTHONPATH=str(ROOT),
    )
    return env


# What-if only (--saga-batch): the real worker, with one class attribute changed in each
# pool process once Django is set up there.
_PATCHED_WORKER = """
import sys
from celery.signals import worker_process_init

def _patch(**kwargs):
    from sagas.welcome import WelcomeSaga
    WelcomeSaga.batch_size = {batch}

worker_process_init.connect(_patch, weak=False)
from celery.__main__ import main
sys.argv = ["celery", *sys.argv[1:]]
sys.exit(main())
"""


def start_celery(
    workdir: Path, mail_dir: Path, concurrency: int | None, saga_batch: int | None
) -> dict[str, Any]:
    celery = str(Path(sys.executable).parent / "celery")
    env = _service_env(mail_dir)
    worker_cmd = [celery, "-A", "config", "worker", "--loglevel", "WARNING"]
    if saga_batch:
        code = _PATCHED_WORKER.format(batch=int(saga_batch))
        worker_cmd = [sys.executable, "-c", code, *worker_cmd[1:]]
    if concurrency:
        worker_cmd += ["--concurrency", str(concurrency)]
    beat_cmd = [
        celery, "-A", "config", "beat", "--loglevel", "WARNING",
        "--schedule", str(workdir / "celerybeat-schedule"),
    ]  # fmt: skip
    procs = {}
    for name, cmd in (("worker", worker_cmd), ("beat", beat_cmd)):
        log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop_celery
        procs[name] = {
            "proc": subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            "log": log,
            "path": workdir / f"{name}.log",
        }
    return procs


def stop_celery(procs: dict[str, Any]) -> None:
    """SIGTERM the processes we started (warm shutdown), SIGKILL their groups after 30 s."""
    for entry in procs.values():
        with contextlib.suppress(ProcessLookupError):
            entry["proc"].send_signal(signal.SIGTERM)
    for entry in procs.values():
        try:
            entry["proc"].wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry["proc"].pid, signal.SIGKILL)
            entry["proc"].wait(timeout=10)
        entry["log"].close()


def wait_for_read_model(expected_rows: int, timeout: float = 90.0) -> float:
    started = time.monotonic()
    with _connect(autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            if conn.execute("SELECT count(*) FROM users_user").fetchone()[0] >= expected_rows:
                return time.monotonic() - started
            time.sleep(0.2)
    raise RuntimeError(f"the worker did not project {expected_rows} users in {timeout} s")


def wait_for_sagas(expected: int, timeout: float = 120.0) -> float:
    """Let the seed's welcome sagas finish, so that the load starts from a steady state."""
    started = time.monotonic()
    with _connect(autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            done = conn.execute(
                "SELECT count(*) FROM sagas_instance WHERE status = 'completed'"
            ).fetchone()[0]
            if done >= expected:
                break
            time.sleep(0.2)
    return time.monotonic() - started


def prepare(args) -> None:
    import psycopg
    import redis

    with psycopg.connect(**_pg_params("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
        cwd=ROOT, env=os.environ.copy(), check=True,
    )  # fmt: skip
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()


# --- analysis ---------------------------------------------------------------------------------


def analyse(samples: list[dict], series: list, start_at: float, args) -> dict[str, Any]:
    windows = []
    t0 = start_at + args.warmup
    for r in range(args.rounds):
        lo, hi = t0 + r * args.seconds, t0 + (r + 1) * args.seconds
        mine = [s for s in samples if lo <= s["commit"] < hi]
        model = [s["model"] for s in mine if s["model"] is not None]
        floor = [s["floor"] for s in mine if s["floor"] is not None]
        foreign = [age for t, age, *_ in series if lo <= t < hi]
        windows.append(
            {
                "round": r,
                "appends": len(mine),
                "appends_per_s": round(len(mine) / args.seconds, 1),
                "read_model": _stats_ms(model),
                "floor": _stats_ms(floor),
                "not_seen_in_read_model": sum(1 for s in mine if s["model"] is None),
                "oldest_foreign_write_xact_ms_max": round(max(foreign, default=0) * 1000, 1),
                "oldest_own_write_xact_ms_max": round(
                    max((x[3] for x in series if lo <= x[0] < hi), default=0) * 1000, 1
                ),
                "celery_queue_length_max": max(
                    (x[4] for x in series if lo <= x[0] < hi), default=0
                ),
                "celery_queue_length_median": statistics.median(
                    [x[4] for x in series if lo <= x[0] < hi] or [0]
                ),
                "share_of_time_foreign_write_xact_over_50ms": round(
                    sum(1 for a in foreign if a > 0.05) / max(1, len(foreign)), 3
                ),
            }
        )
    measured = [s for s in samples if t0 <= s["commit"] < t0 + args.rounds * args.seconds]
    model = [s["model"] for s in measured if s["model"] is not None]
    floor = [s["floor"] for s in measured if s["floor"] is not None]

    # Were the slowest appends held back by an open write transaction (the feed reads
    # below the oldest one)? For each append, the oldest write transaction seen while it
    # waited: in other databases (foreign) and in this one (the service's own).
    def blocked(sample: dict, column: int = 1) -> float:
        end = sample["commit"] + (sample["model"] or DRAIN_TIMEOUT)
        return max((x[column] for x in series if sample["commit"] <= x[0] <= end), default=0.0)

    slow_cut = _percentile(model, 0.99) or 0
    slowest = [s for s in measured if s["model"] is not None and s["model"] >= slow_cut]
    fast = [s for s in measured if s["model"] is not None and s["model"] < slow_cut]
    rng = random.Random(0)
    fast_sample = rng.sample(fast, min(len(fast), 500))
    by_kind = {}
    for kind in ("create", "update"):
        values = [s["model"] for s in measured if s["kind"] == kind and s["model"] is not None]
        by_kind[kind] = _stats_ms(values)
    return {
        "overall": {
            "appends": len(measured),
            "appends_per_s": round(len(measured) / (args.rounds * args.seconds), 1),
            "read_model": _stats_ms(model),
            "floor": _stats_ms(floor),
            "read_model_minus_floor_p50_ms": round(
                ((_percentile(model, 0.5) or 0) - (_percentile(floor, 0.5) or 0)) * 1000, 2
            ),
            "not_seen_in_read_model": sum(1 for s in measured if s["model"] is None),
            "by_kind": by_kind,
        },
        "rounds": windows,
        "slowest_1pct": {
            "count": len(slowest),
            "with_foreign_write_xact_over_50ms_open_meanwhile": sum(
                1 for s in slowest if blocked(s) > 0.05
            ),
            "with_own_write_xact_over_50ms_open_meanwhile": sum(
                1 for s in slowest if blocked(s, 3) > 0.05
            ),
            "median_oldest_own_xact_ms": round(
                statistics.median([blocked(s, 3) for s in slowest]) * 1000, 1
            )
            if slowest
            else None,
            "median_oldest_foreign_xact_ms": round(
                statistics.median([blocked(s) for s in slowest]) * 1000, 1
            )
            if slowest
            else None,
        },
        "other_99pct_sampled": {
            "count": len(fast_sample),
            "with_foreign_write_xact_over_50ms_open_meanwhile": sum(
                1 for s in fast_sample if blocked(s) > 0.05
            ),
            "with_own_write_xact_over_50ms_open_meanwhile": sum(
                1 for s in fast_sample if blocked(s, 3) > 0.05
            ),
        },
    }


def chart(samples: list[dict], series: list, start_at: float, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = result["settings"]
    t0 = start_at + args["warmup_s"]
    t1 = t0 + args["rounds"] * args["seconds"]
    measured = [s for s in samples if t0 <= s["commit"] < t1]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    xs = [s["commit"] - t0 for s in measured if s["model"] is not None]
    ys = [s["model"] * 1000 for s in measured if s["model"] is not None]
    ax.scatter(xs, ys, s=2, alpha=0.5, color="#1f77b4", label="read model (users_user)")
    fx = [s["commit"] - t0 for s in measured if s["floor"] is not None]
    fy = [s["floor"] * 1000 for s in measured if s["floor"] is not None]
    ax.scatter(fx, fy, s=2, alpha=0.3, color="#7f7f7f", label="floor (events read back)")
    for column, color, label in (
        (3, "#ff7f0e", "oldest open write transaction, this database (the service)"),
        (1, "#d62728", "oldest open write transaction, other databases"),
    ):
        st = [(x[0] - t0, x[column] * 1000) for x in series if t0 <= x[0] < t1]
        if st and max(y for _, y in st) > 0:
            ax.plot([x for x, _ in st], [max(y, 0.1) for _, y in st], color=color,
                    linewidth=0.8, alpha=0.7, label=label)  # fmt: skip
    ax.axhline(50, color="green", linestyle=":", linewidth=1)
    ax.axhline(250, color="orange", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    queue = [(x[0] - t0, x[4]) for x in series if t0 <= x[0] < t1]
    if queue:
        twin = ax.twinx()
        twin.plot([x for x, _ in queue], [y for _, y in queue], color="#2ca02c", linewidth=0.8,
                  alpha=0.8, label="tasks waiting in the Celery queue (right axis)")  # fmt: skip
        twin.set_ylabel("tasks waiting in the Celery queue", color="#2ca02c")
        twin.set_ylim(bottom=0)
        twin.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("seconds into the measurement")
    ax.set_ylabel("ms (log scale)")
    ax.set_title(f"Lag per append at {args['rate']} appends/s (targets: p50 50 ms, p99 250 ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", markerscale=4)

    ax = axes[1]
    for key, color, label in (("model", "#1f77b4", "read model"), ("floor", "#7f7f7f", "floor")):
        values = sorted(s[key] * 1000 for s in measured if s[key] is not None)
        if values:
            ax.plot(values, [i / len(values) for i in range(len(values))], color=color, label=label)
    ax.axvline(50, color="green", linestyle=":", linewidth=1)
    ax.axvline(250, color="orange", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("lag from commit (ms, log scale)")
    ax.set_ylabel("share of appends")
    ax.set_title("Distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    overall = result["summary"]["overall"]
    fig.suptitle(
        f"Commit -> read model, one Celery worker ({result['environment']['worker_processes']} "
        f"processes): p50 {overall['read_model']['p50_ms']} ms, p99 "
        f"{overall['read_model']['p99_ms']} ms; floor p50 {overall['floor']['p50_ms']} ms; "
        f"other load {result['environment']['other_load_cores']} cores",
        fontsize=10,
    )
    common.save_chart(fig, path)


def _versions() -> dict[str, Any]:
    from importlib.metadata import version

    with _connect("postgres", autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": CPUS,
        "python": platform.python_version(),
        "django": version("django"),
        "celery": version("celery"),
        "postgresql": pg,
        "git_commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="appends/s, all writers")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--saga-batch",
        type=int,
        default=None,
        help="what-if, NOT the code as it is: run the worker with WelcomeSaga.batch_size set "
        "to this (default: the code's, 500)",
    )
    parser.add_argument("--create-share", type=float, default=0.25)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="worker processes (default: Celery's)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lag.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "lag.png")
    args = parser.parse_args()

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lag-"))
    mail_dir = workdir / "mail"
    mail_dir.mkdir()
    print(f"preparing {DB!r} (dropped and recreated) and Redis db {REDIS_DB} (flushed)")
    prepare(args)
    environment = _versions()
    procs = start_celery(workdir, mail_dir, args.concurrency, args.saga_batch)
    ctx = mp.get_context("spawn")
    appends, results, stop, go = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    start = ctx.Value("d", 0.0)
    children = []
    try:
        time.sleep(2.0)  # let the worker connect before the first wake-ups
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
        poller = ctx.Process(target=_poller, args=(child_args, appends, stop, results))
        monitor = ctx.Process(target=_monitor, args=(stop, results))
        writers = [
            ctx.Process(target=_writer, args=(i, child_args, go, start, appends, results))
            for i in range(args.writers)
        ]
        children = [poller, monitor, *writers]
        for child in children:
            child.start()
        seeded = 0
        for _ in range(args.writers):
            message = results.get(timeout=120)
            if "error" in message:
                raise RuntimeError(message["error"])
            seeded += message["seeded"]
        caught_up = wait_for_read_model(seeded)
        settled = wait_for_sagas(seeded)
        print(
            f"seeded {seeded} users; projected {caught_up:.1f} s and welcomed {settled:.1f} s "
            "after the last one"
        )
        start_at = start.value = time.monotonic() + 1.0
        go.set()
        worker_pids = common.process_tree(procs["worker"]["proc"].pid)
        worker_cpu0 = {pid: common.cpu_seconds(pid) or 0.0 for pid in worker_pids}
        machine0, wall0 = common.machine_busy(), time.monotonic()
        load_start = os.getloadavg()[0]
        total = args.warmup + args.rounds * args.seconds
        print(
            f"load: {args.rate:.0f} appends/s for {total:.0f} s ({args.warmup:.0f} s warm-up, "
            f"{args.rounds} x {args.seconds:.0f} s measured)",
            flush=True,
        )
        writer_reports, poller_report, monitor_report = [], None, None
        while len(writer_reports) < args.writers:
            message = results.get(timeout=total + 120)
            if "error" in message:
                raise RuntimeError(message["error"])
            writer_reports.append(message)
        wall = time.monotonic() - wall0
        worker_cpu = sum(
            (common.cpu_seconds(pid) or worker_cpu0.get(pid, 0.0)) - worker_cpu0.get(pid, 0.0)
            for pid in common.process_tree(procs["worker"]["proc"].pid)
        )
        machine = common.machine_busy() - machine0
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
        stop_celery(procs)
        for child in children:
            if child.is_alive():
                child.terminate()
    samples = poller_report["samples"]
    series = monitor_report["series"]
    writers_cpu = sum(r["cpu_s"] for r in writer_reports)
    ours_cpu = worker_cpu + writers_cpu + poller_report["cpu_s"]
    environment.update(
        worker_processes=len(worker_pids) - 1,
        worker_cpu_cores=round(worker_cpu / wall, 2),
        writers_cpu_cores=round(writers_cpu / wall, 2),
        poller_cpu_cores=round(poller_report["cpu_s"] / wall, 3),
        poller_backend_cpu_cores=round(poller_report["backend_cpu_s"] / wall, 3),
        polls_per_s=round(poller_report["polls"] / wall, 1),
        # Busy cores minus our Python processes; PostgreSQL backends (ours and others) count
        # here, so it is an upper bound of what others used.
        other_load_cores=round(max(0.0, machine - ours_cpu) / wall, 2),
        loadavg_1m_start=round(load_start, 2),
        loadavg_1m_end=round(os.getloadavg()[0], 2),
    )
    summary = analyse(samples, series, start_at, args)
    census = [
        {**c, "t": round(c["t"] - start_at - args.warmup, 1)}
        for c in monitor_report["composition"]
        if c["t"] >= start_at
    ]
    summary["celery_queue_census"] = census
    if census:
        print(f"  Celery queue at the end of the load: {census[-1]}")
    emails = sum(
        1
        for path in mail_dir.glob("*")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("To: ")
    )
    worker_log = procs["worker"]["path"].read_text(errors="replace")
    summary["worker_log_errors"] = worker_log.count("ERROR")
    lines = worker_log.splitlines()
    summary["worker_log_error_excerpts"] = [
        "\n".join(lines[i : i + 12]) for i, line in enumerate(lines) if "ERROR" in line
    ][:5]
    summary["welcome_emails_sent"] = emails
    summary["writers"] = writer_reports
    summary["poller"] = {k: v for k, v in poller_report.items() if k not in ("samples", "poller")}
    overall = summary["overall"]
    targets = [
        {"name": "read-model lag p50 < 50 ms at 200 appends/s",
         "value": overall["read_model"]["p50_ms"], "target": 50,
         "met": overall["read_model"]["p50_ms"] is not None
         and overall["read_model"]["p50_ms"] < 50},
        {"name": "read-model lag p99 < 250 ms at 200 appends/s",
         "value": overall["read_model"]["p99_ms"], "target": 250,
         "met": overall["read_model"]["p99_ms"] is not None
         and overall["read_model"]["p99_ms"] < 250},
        {"name": "every append reached the read model",
         "value": overall["not_seen_in_read_model"], "target": 0,
         "met": overall["not_seen_in_read_model"] == 0},
    ]  # fmt: skip
    summary["targets"] = targets
    result = {
        "benchmark": "bench/lag.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "rate": args.rate,
            "writers": args.writers,
            "create_share": args.create_share,
            "warmup_s": args.warmup,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "poll_ms": args.poll_ms,
            "worker_concurrency": args.concurrency or "celery default (CPU count)",
            "what_if_saga_batch": args.saga_batch,
            "welcome_delay_s": os.environ.get("WELCOME_DELAY_SECONDS", "1.0 (default)"),
        },
        "environment": environment,
        "summary": summary,
        "samples": [
            {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()} for s in samples
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    chart(samples, series, start_at, result, args.chart)
    if summary["worker_log_errors"]:
        print(f"the worker logged errors: see {workdir}/worker.log")
    else:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{overall['appends']} appends measured ({overall['appends_per_s']}/s)")
    for r in summary["rounds"]:
        print(
            f"  round {r['round']}: {r['appends_per_s']}/s; read model p50 "
            f"{r['read_model']['p50_ms']} p99 {r['read_model']['p99_ms']} max "
            f"{r['read_model']['max_ms']} ms; floor p50 {r['floor']['p50_ms']} p99 "
            f"{r['floor']['p99_ms']} ms; oldest foreign write xact "
            f"{r['oldest_foreign_write_xact_ms_max']} ms, own "
            f"{r['oldest_own_write_xact_ms_max']} ms; "
            f"Celery queue max {r['celery_queue_length_max']}"
        )
    print(
        f"  all: read model p50 {overall['read_model']['p50_ms']} p99 "
        f"{overall['read_model']['p99_ms']} ms; floor p50 {overall['floor']['p50_ms']} p99 "
        f"{overall['floor']['p99_ms']} ms; slowest 1%: {json.dumps(summary['slowest_1pct'])}"
    )
    print(f"  environment: {json.dumps(environment)}")
    for t in targets:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
