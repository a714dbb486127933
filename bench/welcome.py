"""Welcome saga: time from POST /v1/users to UserWelcomed committed, at 100 creates/s.

Run (one command, from the project root, about 2 minutes)::

    .venv/bin/python bench/welcome.py

It needs PostgreSQL at ``postgres://postgres@127.0.0.1:5432`` (``BENCH_PG_URL``) and
Redis at ``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). It copies the checkout
(tracked and untracked, not ignored, files, plus ``.venv``) to ``/tmp/benchsvc-welcome``,
DROPS and recreates the database ``bench_welcome``, FLUSHES Redis database 13, and starts
the whole service there with ``scripts/up.sh`` (gunicorn with 2 sync workers, one Celery
worker with its default pool, Celery beat) on port 8813 with ``WELCOME_DELAY_SECONDS=0``,
``DEBUG=false``, ``THROTTLE_USER_RATE=100000000/minute`` and Django's file-based email
backend (``EMAIL_FILE_PATH`` in a temporary folder, in ``/dev/shm`` when there is one),
so that every email sent can be counted. ``scripts/down.sh`` stops it all at the end,
whatever happens.

The load: ``POST /v1/users`` (bearer token, unique email) on an open-loop schedule of
``--rate`` creates/s (default 100), for ``--warmup`` s and then ``--rounds`` windows of
``--seconds`` (default 3 x 20 s), sent by a pool of client threads so that a slow
response never delays the next request. A poller process looks, every ``--poll-ms``
(5 ms), for the ``UserWelcomed`` event of each user created and not yet welcomed.

Per user: ``welcomed`` = (poll that first saw UserWelcomed committed) - (POST sent), and
``after response`` = the same minus the POST's own response time; the POST latency is
the reference measured in the same run (the command had committed by then). At the end,
after the saga has drained (at most ``--drain`` s), it checks that every user has exactly
one UserWelcomed and got exactly one email, and counts the saga instances by status.
Results go to ``bench/results/welcome.json`` (gitignored), the chart to
``docs/img/welcome.png``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_welcome"
REDIS_DB = 13  # 12 is bench/soak.py's
PORT = 8813  # 8812 is bench/soak.py's
SERVICE_DIR = Path("/tmp/benchsvc-welcome")
CPUS = os.cpu_count() or 1


def _connect(dbname: str = DB) -> Any:
    return common.connect(PG_URL, dbname, autocommit=True)


PIDFILES = {"gunicorn": "gunicorn.pid", "celery": "celery-worker.pid"}


def _pidfile(name: str) -> int | None:
    return common.pidfile(SERVICE_DIR, name)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _stats_ms(values: list[float]) -> dict[str, Any]:
    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {
        "count": len(values),
        "p50_ms": ms(_percentile(values, 0.5)),
        "p90_ms": ms(_percentile(values, 0.9)),
        "p99_ms": ms(_percentile(values, 0.99)),
        "max_ms": ms(max(values) if values else None),
    }


# --- the service ------------------------------------------------------------------------------


def _service_env(mail_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        DATABASE_URL=f"{PG_URL}/{DB}",
        REDIS_URL=f"{REDIS_BASE}/{REDIS_DB}",
        PORT=str(PORT),
        THROTTLE_USER_RATE="100000000/minute",
        DEBUG="false",
        WELCOME_DELAY_SECONDS="0",
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        CACHE_KEY_PREFIX="bench-welcome",
    )
    return env


def copy_checkout(worker_concurrency: int | None = None) -> None:
    common.copy_checkout(ROOT, SERVICE_DIR)
    if worker_concurrency:  # what-if: the copy's up.sh starts the worker with more processes
        up = SERVICE_DIR / "scripts" / "up.sh"
        line = 'start_celery worker "$WORKER_PIDFILE" "$WORKER_LOG"'
        text = up.read_text()
        if line + "\n" not in text:
            raise RuntimeError("scripts/up.sh changed: cannot apply --worker-concurrency")
        up.write_text(text.replace(line + "\n", f"{line} --concurrency {worker_concurrency}\n"))


def prepare_servers() -> None:
    import redis

    with _connect("postgres") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}").flushdb()


def run_script(name: str, env: dict[str, str], log: Path) -> None:
    common.run_script(SERVICE_DIR, name, env, log)


def create_token(env: dict[str, str]) -> str:
    return common.create_token(SERVICE_DIR, env)


# --- the poller -------------------------------------------------------------------------------


def _poller(poll_ms: float, drain: float, created, stop, results) -> None:
    """Every poll interval: which created users have their UserWelcomed committed."""
    try:
        conn = _connect()
        pending: dict[str, dict[str, Any]] = {}
        seen: list[dict[str, Any]] = []
        interval = poll_ms / 1000
        polls = 0
        horizon = "0"
        early: dict[str, float] = {}  # welcomed before its POST's answer reached us
        done: set[str] = set()  # a poll can list a stream again until the horizon passes it
        drain_deadline = None
        while True:
            while True:
                try:
                    item = created.get_nowait()
                except queue_module.Empty:
                    break
                stream = f"user-{item['id']}"
                if stream in early:
                    item["welcomed_seen"] = early.pop(stream)
                    seen.append(item)
                else:
                    pending[stream] = item
            if stop.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + drain
                if not pending or time.monotonic() > drain_deadline:
                    break
            if not pending:
                time.sleep(interval)
                continue
            t = time.monotonic()
            # Only what committed since the last poll, from the feed index: events of a
            # transaction below the last poll's horizon (the oldest transaction then
            # running) were visible to it. (Not the type index: ANDed in, it reads every
            # UserWelcomed so far.) A query by the pending streams' ids cost 1-4 ms of
            # PostgreSQL CPU a poll (planning, collated text probes, and that type index),
            # most of a core at this rate.
            horizon, rows = conn.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, array("
                "SELECT stream_id FROM events "
                "WHERE transaction_id >= %s::xid8 AND event_type || '' = 'UserWelcomed')",
                [horizon],
                prepare=True,
            ).fetchone()
            polls += 1
            for stream in rows:
                if stream in done:
                    continue
                done.add(stream)
                item = pending.pop(stream, None)
                if item is not None:
                    item["welcomed_seen"] = t
                    seen.append(item)
                else:
                    early[stream] = t
            pause = interval - (time.monotonic() - t)
            if pause > 0:
                time.sleep(pause)
        results.put({"seen": seen, "never": list(pending.values()), "polls": polls})
    except BaseException:
        results.put({"error": traceback.format_exc()})


# --- the load ---------------------------------------------------------------------------------


def run_load(token: str, args, created, nonce: str) -> tuple[list[dict], float]:
    """Open loop: request k is due at start + k / rate, whoever sends it."""
    total = int(args.rate * (args.warmup + args.rounds * args.seconds))
    start = time.monotonic() + 0.5
    slots = iter(range(total))
    lock = threading.Lock()
    records: list[dict] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        while True:
            with lock:
                k = next(slots, None)
            if k is None:
                break
            due = start + k / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            email = f"welcome-{nonce}-{k}@example.com"
            body = json.dumps({"email": email, "first_name": "Bench", "last_name": f"User {k}"})
            sent = time.monotonic()
            record = {"k": k, "email": email, "due": due, "sent": sent}
            try:
                conn.request("POST", "/v1/users", body, headers)
                response = conn.getresponse()
                payload = response.read()
                record["status"] = response.status
                record["response"] = time.monotonic()
                if response.status == 201:
                    record["id"] = json.loads(payload)["id"]
                    created.put(dict(record))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                record["status"] = f"error: {exc!r}"
                record["response"] = time.monotonic()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            with lock:
                records.append(record)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, start


# --- checks -----------------------------------------------------------------------------------


def exactly_once(mail_dir: Path, emails: set[str]) -> dict[str, Any]:
    with _connect() as conn:
        welcomed_per_stream = dict(
            conn.execute(
                "SELECT stream_id, count(*) FROM events WHERE event_type = 'UserWelcomed' "
                "GROUP BY stream_id"
            ).fetchall()
        )
        created = [
            row[0]
            for row in conn.execute(
                "SELECT stream_id FROM events WHERE event_type = 'UserCreated'"
            ).fetchall()
        ]
        sagas = dict(conn.execute("SELECT status, count(*) FROM sagas_instance GROUP BY status"))
        attempts = conn.execute(
            "SELECT count(*) FILTER (WHERE attempts > 0), max(attempts) FROM sagas_instance"
        ).fetchone()
    sent = collections.Counter()
    for path in mail_dir.glob("*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("To: "):
                sent[line[4:].strip()] += 1
    counts = collections.Counter(welcomed_per_stream.get(s, 0) for s in created)
    return {
        "users_created": len(created),
        "users_welcomed_once": counts.get(1, 0),
        "users_not_welcomed": counts.get(0, 0),
        "users_welcomed_more_than_once": sum(n for c, n in counts.items() if c > 1),
        "emails_sent": sum(sent.values()),
        "users_with_one_email": sum(1 for e in emails if sent.get(e) == 1),
        "users_without_email": sum(1 for e in emails if sent.get(e, 0) == 0),
        "users_with_duplicate_email": sum(1 for e in emails if sent.get(e, 0) > 1),
        "emails_to_unknown_addresses": sum(n for e, n in sent.items() if e not in emails),
        "saga_instances_by_status": sagas,
        "saga_instances_with_failed_attempts": attempts[0],
        "saga_max_attempts": attempts[1],
    }


def wait_welcomed(expected: int, timeout: float) -> float:
    started = time.monotonic()
    with _connect() as conn:
        while time.monotonic() - started < timeout:
            done = conn.execute(
                "SELECT count(*) FROM sagas_instance WHERE status = 'completed'"
            ).fetchone()[0]
            if done >= expected:
                return time.monotonic() - started
            time.sleep(0.5)
    return time.monotonic() - started


# --- analysis and chart -----------------------------------------------------------------------


def analyse(records: list[dict], seen: list[dict], start: float, args) -> dict[str, Any]:
    by_k = {item["k"]: item for item in seen}
    t0 = start + args.warmup
    rounds = []
    for r in range(args.rounds + 1):
        if r < args.rounds:
            lo, hi = t0 + r * args.seconds, t0 + (r + 1) * args.seconds
        else:  # all measured rounds together
            lo, hi = t0, t0 + args.rounds * args.seconds
        mine = [x for x in records if lo <= x["due"] < hi]
        ok = [x for x in mine if x.get("status") == 201]
        welcomed = [by_k[x["k"]]["welcomed_seen"] - x["sent"] for x in ok if x["k"] in by_k]
        after = [by_k[x["k"]]["welcomed_seen"] - x["response"] for x in ok if x["k"] in by_k]
        posts = [x["response"] - x["sent"] for x in mine if "response" in x]
        late = [max(0.0, x["sent"] - x["due"]) for x in mine]
        sent = [x["sent"] for x in mine]
        rounds.append(
            {
                "round": r if r < args.rounds else "all",
                "creates": len(mine),
                "creates_per_s_scheduled": round(len(mine) / (hi - lo), 1),
                # What the service took: a late client sends the same requests over longer.
                "creates_per_s_sent": round(len(mine) / (max(sent) - min(sent)), 1)
                if len(sent) > 1
                else None,
                "failed_posts": len(mine) - len(ok),
                "welcomed": _stats_ms(welcomed),
                "welcomed_after_response": _stats_ms(after),
                "post_latency": _stats_ms(posts),
                "not_welcomed": sum(1 for x in ok if x["k"] not in by_k),
                "client_late_p99_ms": round((_percentile(late, 0.99) or 0) * 1000, 1),
            }
        )
    return {"rounds": rounds[:-1], "overall": rounds[-1]}


def chart(records: list[dict], seen: list[dict], start: float, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    by_k = {item["k"]: item for item in seen}
    t0 = start + settings["warmup_s"]
    ok = [x for x in records if x.get("status") == 201]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    xs = [x["sent"] - t0 for x in ok if x["k"] in by_k]
    ys = [(by_k[x["k"]]["welcomed_seen"] - x["sent"]) * 1000 for x in ok if x["k"] in by_k]
    ax.scatter(xs, ys, s=3, alpha=0.5, color="#2ca02c", label="POST sent -> UserWelcomed committed")
    px = [x["sent"] - t0 for x in ok]
    py = [(x["response"] - x["sent"]) * 1000 for x in ok]
    ax.scatter(px, py, s=3, alpha=0.3, color="#7f7f7f", label="POST latency (reference)")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axhline(500, color="red", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the measurement (negative: warm-up)")
    ax.set_ylabel("ms (log scale)")
    ax.set_title(f"Welcome time per user at {settings['rate']:.0f} creates/s (target p99 500 ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", markerscale=4)
    ax = axes[1]
    measured = [x for x in ok if x["sent"] >= t0]
    for label, color, values in (
        (
            "welcomed",
            "#2ca02c",
            [
                (by_k[x["k"]]["welcomed_seen"] - x["sent"]) * 1000
                for x in measured
                if x["k"] in by_k
            ],
        ),
        ("POST latency", "#7f7f7f", [(x["response"] - x["sent"]) * 1000 for x in measured]),
    ):
        values.sort()
        if values:
            ax.plot(values, [i / len(values) for i in range(len(values))], color=color, label=label)
    ax.axvline(500, color="red", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_ylabel("share of users")
    ax.set_title("Distribution (measured rounds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    overall = result["summary"]["overall"]
    fig.suptitle(
        f"Welcome saga, WELCOME_DELAY_SECONDS=0, one Celery worker: p50 "
        f"{overall['welcomed']['p50_ms']} ms, p99 {overall['welcomed']['p99_ms']} ms; other load "
        f"{result['environment']['other_load_cores']} cores",
        fontsize=10,
    )
    common.save_chart(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="creates/s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64, help="client threads")
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=180.0, help="max wait after the load")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="what-if, NOT up.sh as it is: start the Celery worker with this many processes",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "welcome.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "welcome.png")
    args = parser.parse_args()

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-welcome-"))
    mail_dir = common.mail_folder("bench-welcome-mail-")
    log = workdir / "service.log"
    env = _service_env(mail_dir)
    print(f"copying the checkout to {SERVICE_DIR}; preparing {DB!r} and Redis db {REDIS_DB}")
    copy_checkout(args.worker_concurrency)
    prepare_servers()
    ctx = mp.get_context("spawn")
    created, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    poller = ctx.Process(
        target=_poller, args=(args.poll_ms, args.drain, created, stop, results), daemon=True
    )
    nonce = uuid.uuid4().hex[:8]
    try:
        print("starting the service with scripts/up.sh", flush=True)
        run_script("up.sh", env, log)
        token = create_token(env)
        poller.start()
        groups = {g: common.process_tree(_pidfile(name) or 0) for g, name in PIDFILES.items()}
        cpu0 = {g: {p: common.cpu_seconds(p) or 0.0 for p in pids} for g, pids in groups.items()}
        machine0, load0 = common.machine_busy(), os.getloadavg()[0]
        self0 = time.process_time()
        total = args.warmup + args.rounds * args.seconds
        print(f"load: {args.rate:.0f} creates/s for {total:.0f} s", flush=True)
        records, start = run_load(token, args, created, nonce)
        load_wall = time.monotonic() - start
        print(f"load done; waiting (at most {args.drain:.0f} s) for every welcome", flush=True)
        drained = wait_welcomed(sum(1 for r in records if r.get("status") == 201), args.drain)
        wall = time.monotonic() - start
        cpu = {
            g: sum(
                (common.cpu_seconds(p) or cpu0[g].get(p, 0.0)) - cpu0[g].get(p, 0.0)
                for p in common.process_tree(_pidfile(PIDFILES[g]) or 0)
            )
            for g in groups
        }  # fmt: skip
        machine = common.machine_busy() - machine0
        stop.set()
        report = results.get(timeout=args.drain + 60)
        if "error" in report:
            raise RuntimeError(report["error"])
        poller.join(timeout=30)
        emails = {r["email"] for r in records if r.get("status") == 201}
        check = exactly_once(mail_dir, emails)
        worker_log = (SERVICE_DIR / ".data" / "log" / "celery-worker.log").read_text(
            errors="replace"
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            run_script("down.sh", env, log)
        if poller.is_alive():
            poller.terminate()
    seen = report["seen"]
    summary = analyse(records, seen, start, args)
    welcomes = sum(1 for r in records if r.get("status") == 201)
    ours = sum(cpu.values()) + (time.process_time() - self0)
    environment = {
        "cpus": CPUS,
        "python": platform.python_version(),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "worker_processes": len(groups["celery"]) - 1,
        "gunicorn_processes": len(groups["gunicorn"]) - 1,
        "load_seconds": round(load_wall, 1),
        "drain_seconds": round(drained, 1),
        "worker_cpu_cores_during_run": round(cpu["celery"] / wall, 2),
        "gunicorn_cpu_cores_during_run": round(cpu["gunicorn"] / wall, 2),
        "worker_cpu_ms_per_welcome": round(cpu["celery"] * 1000 / max(1, welcomes), 2),
        "gunicorn_cpu_ms_per_create": round(cpu["gunicorn"] * 1000 / max(1, welcomes), 2),
        # Busy cores minus gunicorn, Celery and this client: PostgreSQL (ours and
        # others) and everyone else's processes.
        "other_load_cores": round(max(0.0, machine - ours) / wall, 2),
        "loadavg_1m_start": round(load0, 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "poller_polls_per_s": round(report["polls"] / wall, 1),
        "worker_log_errors": worker_log.count("ERROR"),
        "worker_log_tail": worker_log[-2000:],
    }
    overall = summary["overall"]
    summary["exactly_once"] = check
    summary["targets"] = [
        {
            "name": f"POST -> UserWelcomed p99 < 500 ms at {args.rate:.0f} creates/s",
            "value": overall["welcomed"]["p99_ms"],
            "target": 500,
            "met": overall["welcomed"]["p99_ms"] is not None
            and overall["welcomed"]["p99_ms"] < 500,
        },
        {
            "name": "every user welcomed exactly once (one UserWelcomed, one email)",
            "value": {
                k: check[k]
                for k in (
                    "users_created",
                    "users_welcomed_once",
                    "users_with_one_email",
                    "users_welcomed_more_than_once",
                    "users_with_duplicate_email",
                    "users_not_welcomed",
                    "users_without_email",
                )
            },
            "target": "all once",
            "met": check["users_welcomed_once"] == check["users_created"]
            and check["users_with_one_email"] == len(emails)
            and check["emails_to_unknown_addresses"] == 0,
        },
        {
            "name": "no POST failed",
            "value": sum(1 for r in records if r.get("status") != 201),
            "target": 0,
            "met": all(r.get("status") == 201 for r in records),
        },
    ]
    result = {
        "benchmark": "bench/welcome.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "rate": args.rate,
            "warmup_s": args.warmup,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "clients": args.clients,
            "poll_ms": args.poll_ms,
            "welcome_delay_seconds": 0,
            "what_if_worker_concurrency": args.worker_concurrency,
        },
        "environment": environment,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(records, seen, start, result, args.chart)
    shutil.rmtree(workdir, ignore_errors=True)
    for r in [*summary["rounds"], overall]:
        print(
            f"  round {r['round']}: {r['creates_per_s_sent']}/s sent "
            f"({r['creates_per_s_scheduled']}/s scheduled), failed {r['failed_posts']}; welcomed "
            f"p50 {r['welcomed']['p50_ms']} p99 {r['welcomed']['p99_ms']} max "
            f"{r['welcomed']['max_ms']} ms; POST p50 {r['post_latency']['p50_ms']} p99 "
            f"{r['post_latency']['p99_ms']} ms; not welcomed {r['not_welcomed']}"
        )
    print(f"  exactly once: {json.dumps(check)}")
    print(f"  environment: { {k: v for k, v in environment.items() if 'tail' not in k} }")
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
