"""Soak: many API clients (locust) for a while, optionally killing the Celery worker, then
the consistency check over everything written.

Run from the project root (about 2 minutes with the defaults)::

    .venv/bin/python bench/soak.py                        # 60 s, 32 clients
    .venv/bin/python bench/soak.py --seconds 600 --clients 48 --kill-worker-every 20

It copies the checkout (tracked and untracked, not ignored, files, plus ``.venv``) to
``/tmp/soaksvc``, so its pid files cannot collide with a ``scripts/up.sh`` of anyone
else; DROPS and recreates the database ``bench_soak`` and FLUSHES Redis database 12
(``--db``, ``--redis-db``; servers from ``BENCH_PG_URL`` / ``BENCH_REDIS_URL``, default
the machine's on 127.0.0.1), and starts the service there with ``scripts/up.sh`` on port
8812: gunicorn (2 sync workers), the Celery worker and beat, with
``THROTTLE_USER_RATE`` raised so the clients measure the service, not the rate limit,
and emails written to files (``tests.faults.ProcessFileBackend``: Django's file backend,
each file named after the sending process group).

Then it runs ``bench/locustfile.py`` headless on loopback, SIGKILLs the worker's whole
process group every ``--kill-worker-every`` seconds (and starts it again as
``scripts/up.sh`` does), waits for the subscribers and sagas to finish, and runs
``python -m tests.consistency``:
every user stream replayed equals its read-model row, one welcome and one email per
user not deleted first, every write a client was acknowledged is stored where the
response said. It prints requests, failures, throughput, latency percentiles, events,
users, welcomes, emails, lost and duplicated, writes ``bench/results/soak.json``
(gitignored) and stops the service with ``scripts/down.sh`` (``--keep`` leaves it up).
Exit status 0 only if the check found nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def copy_checkout(target: Path) -> None:
    common.copy_checkout(ROOT, target)


def prepare_servers(db: str, redis_db: int) -> None:
    import psycopg
    import redis

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    redis.Redis.from_url(f"{REDIS_BASE}/{redis_db}").flushdb()


def service_env(args: argparse.Namespace, mail_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        DATABASE_URL=f"{PG_URL}/{args.db}",
        REDIS_URL=f"{REDIS_BASE}/{args.redis_db}",
        PORT=str(args.port),
        THROTTLE_USER_RATE="1000000000/minute",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="tests.faults.ProcessFileBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        CACHE_KEY_PREFIX="soak",
    )
    return env


def run(service: Path, env: dict[str, str], *command: str, log: Path | None = None) -> str:
    done = subprocess.run(
        command, cwd=service, env=env, capture_output=True, text=True, timeout=600
    )
    if log is not None:
        with log.open("a") as out:
            out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def worker_pid(service: Path) -> int | None:
    try:
        pid = int((service / ".data/run/celery-worker.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def kill_worker(service: Path) -> int | None:
    """SIGKILL the detached worker and its pool (its own process group)."""
    pid = worker_pid(service)
    if pid is None:
        return None
    pgid = os.getpgid(pid)
    os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # gone before a new one takes its pid file
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    return pgid


def start_worker(service: Path, env: dict[str, str]) -> None:
    """Start the worker again exactly as scripts/up.sh does (detached, same files)."""
    (service / ".data/run/celery-worker.pid").unlink(missing_ok=True)
    subprocess.run(
        [
            str(service / ".venv/bin/celery"), "--workdir", str(service), "-A", "config",
            "worker", "--detach", "--loglevel", "INFO", "--umask", "022",
            "--pidfile", str(service / ".data/run/celery-worker.pid"),
            "--logfile", str(service / ".data/log/celery-worker.log"),
        ],
        cwd=service, env={**env, "PYTHONPATH": str(service)}, check=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while worker_pid(service) is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the detached worker writes its pid file a moment later


def locust_stats(prefix: Path) -> dict[str, Any]:
    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]

    def figures(row: dict[str, str]) -> dict[str, Any]:
        return {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 1),
            "p50_ms": float(row["50%"]),
            "p95_ms": float(row["95%"]),
            "p99_ms": float(row["99%"]),
            "max_ms": round(float(row["Max Response Time"]), 1),
        }

    return {
        "total": figures(total),
        "endpoints": {name: figures(row) for name, row in rows.items() if name != "Aggregated"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=8)
    parser.add_argument("--kill-worker-every", type=float, default=0, help="seconds; 0: never")
    parser.add_argument("--port", type=int, default=8812)
    parser.add_argument("--db", default="bench_soak")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--service-dir", type=Path, default=Path("/tmp/soaksvc"))
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/soak.json")
    parser.add_argument("--keep", action="store_true", help="leave the service running")
    args = parser.parse_args()

    service = args.service_dir
    print(f"copying the checkout to {service}; preparing {args.db!r}, Redis db {args.redis_db}")
    copy_checkout(service)
    prepare_servers(args.db, args.redis_db)
    work = service / ".data/soak"
    work.mkdir(parents=True, exist_ok=True)
    mail_dir = common.mail_folder("bench-soak-mail-")
    env = service_env(args, mail_dir)
    log = work / "service.log"
    python = str(service / ".venv/bin/python")
    try:
        print(f"starting the service on port {args.port} (scripts/up.sh; log {log})")
        run(service, env, "scripts/up.sh", log=log)
        token = run(service, env, python, "manage.py", "create_api_token", "soak",
                    "--create-user").strip().splitlines()[-1]  # fmt: skip
        acks = work / "acks.jsonl"
        locust = subprocess.Popen(
            [
                str(service / ".venv/bin/locust"), "-f", "bench/locustfile.py", "--headless",
                "-H", f"http://127.0.0.1:{args.port}", "-u", str(args.clients),
                "-r", str(args.spawn_rate), "-t", f"{args.seconds}s", "--stop-timeout", "30",
                "--csv", str(work / "locust"), "--only-summary", "--loglevel", "WARNING",
            ],
            cwd=service,
            env={**env, "SOAK_TOKEN": token, "SOAK_ACKS": str(acks)},
            stdout=(work / "locust.log").open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        print(f"locust: {args.clients} clients for {args.seconds} s")
        load_before = os.getloadavg()
        killed: list[int] = []
        started = time.monotonic()
        next_kill = started + args.kill_worker_every if args.kill_worker_every else None
        while locust.poll() is None:
            time.sleep(0.5)
            if next_kill and time.monotonic() >= next_kill:
                pgid = kill_worker(service)
                if pgid is not None:
                    killed.append(pgid)
                    print(f"  {time.monotonic() - started:5.0f} s: worker {pgid} SIGKILLed")
                start_worker(service, env)
                next_kill = time.monotonic() + args.kill_worker_every
        load_seconds = time.monotonic() - started
        load_after = os.getloadavg()
        print("locust done; waiting for subscribers and sagas, then checking")
        check_started = time.monotonic()
        check = subprocess.run(
            [python, "-m", "tests.consistency", "--json", "--wait", "600",
             "--email-dir", str(mail_dir), "--acknowledged", str(acks),
             "--killed", ",".join(map(str, killed))],
            cwd=service, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        report = json.loads(check.stdout)
        stats = locust_stats(work / "locust")
    finally:
        if not args.keep:
            subprocess.run(["scripts/down.sh"], cwd=service, env=env, capture_output=True)

    total = stats["total"]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "clients": args.clients,
        "seconds": args.seconds,
        "load_seconds": round(load_seconds, 1),
        "catch_up_and_check_seconds": round(time.monotonic() - check_started, 1),
        "worker_kills": len(killed),
        # The machine is shared: its 1-minute load average before and after the load.
        "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "locust": stats,
        "check": report,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"\nmachine: {os.cpu_count()} CPUs, load average {result['loadavg_before_after']}"
        " (before, after the load)"
    )
    print(
        f"requests {total['requests']}, failures {total['failures']}, "
        f"{total['rps']} req/s, p50 {total['p50_ms']} ms, p95 {total['p95_ms']} ms, "
        f"p99 {total['p99_ms']} ms, max {total['max_ms']} ms"
    )
    for name, row in sorted(stats["endpoints"].items()):
        print(
            f"  {name:28} {row['requests']:7} req {row['failures']:4} failed "
            f"p50 {row['p50_ms']:6} p95 {row['p95_ms']:6} p99 {row['p99_ms']:6} ms"
        )
    sagas = ", ".join(f"{k} {v}" for k, v in sorted(report["sagas"].items()))
    print(
        f"events written {report['events']}, users {report['users']} "
        f"({report['deleted']} deleted), welcomes {report['welcomes']}, sagas: {sagas}, "
        f"emails {report['emails']} (crash-window copies {report['crash_window_emails']}), "
        f"acknowledged writes {report['acknowledged']}, worker kills {len(killed)}"
    )
    print(
        f"lost {report['lost']}, duplicated {report['duplicated']}, "
        f"mismatched {report['mismatched']}"
    )
    for problem in report["problems"]:
        print("  ", problem)
    print(f"results: {args.results}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
