"""HTTP throughput and latency: POST /v1/users and GET /v1/users/{id} vs GET /health.

Run (from the project root; needs ``wrk``, ``apt-get install -y wrk``)::

    eval "$(bench/own_postgres.sh start)"            # optional: a cluster of its own
    .venv/bin/python bench/http_bench.py             # about 5 minutes
    .venv/bin/python bench/http_bench.py --paused-worker-post   # plus POST, worker stopped
    .venv/bin/python bench/http_bench.py --rounds 1 --seconds 3  # quick check

It copies the checkout (tracked and untracked files, and ``.venv``) to
``/tmp/benchsvc-http-<port>``, DROPS and recreates the database ``bench_http``
(``BENCH_PG_URL``), FLUSHES Redis database 11 (``BENCH_REDIS_URL``; ``BENCH_REDIS_DB``
and ``BENCH_PORT`` move it and the port, 8811), and starts the service there with
``scripts/up.sh`` as it is configured by default, with ``DEBUG=false``, the user
throttle raised (it still runs on every request) and ``WELCOME_DELAY_SECONDS=0``;
``scripts/down.sh`` stops it at the end.

It seeds 1,000 users through the API, waits until the worker is idle (every subscriber
at the head of the feed, no saga open, no task in the broker, the worker under 5% of a
core), warms up, then runs ``--rounds`` rounds of ``--seconds`` each: /health and GET
(alternating order), then POST, then waits for the worker to drain what POST started.
wrk drives 32 connections over loopback. Each phase records requests/s, wrk's latency
percentiles, the status codes, and the CPU used by gunicorn, the worker, the PostgreSQL
backends and wrk, and what everything else used; the worker CPU a POST phase left
behind is counted in the drain after it. At the end every created user must be in the
read model. Results: ``bench/results/http.json`` (``--out``).

``--paused-worker-post`` adds a POST phase per round with the worker and beat stopped
(SIGSTOP): what the web tier and PostgreSQL reach with both cores to themselves.
"""

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
import common  # noqa: E402  (bench/common.py, next to this script)

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_http"
PORT, REDIS_DB = common.service_slot(8811, 11)
SERVICE_DIR = Path(f"/tmp/benchsvc-http-{PORT}")
ENDPOINTS = ("health", "get", "post")
# With --paused-worker-post: POST again with the Celery worker and beat stopped (SIGSTOP),
# what the web tier and PostgreSQL reach with both cores to themselves. A diagnostic, not
# a target: the service's async work is still owed, and is done in the drain after.
PAUSED_POST = "post_paused"
SEED_USERS = 1000
CPUS = os.cpu_count() or 1

# wrk scripts: report.lua (statuses, one JSON line at the end) before each endpoint's own.
WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
_PATHS = {"health": "/health", "get": "/v1/users", "post": "/v1/users"}


def _connect(dbname: str = DB) -> Any:
    return common.connect(PG_URL, dbname, autocommit=True)


def _pidfile(name: str) -> int | None:
    return common.pidfile(SERVICE_DIR, name)


class CpuMeter:
    """CPU used by each part of the service (and by everything else) between marks."""

    def __init__(self) -> None:
        self.monitor = _connect()

    def _groups(self) -> dict[str, list[int]]:
        groups = {}
        for name, pidfile in (("gunicorn", "gunicorn.pid"), ("celery", "celery-worker.pid")):
            pid = _pidfile(pidfile)
            groups[name] = common.process_tree(pid) if pid else []
        groups["postgres"] = [
            row[0]
            for row in self.monitor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [DB],
            ).fetchall()
        ]
        return groups

    def mark(self) -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "machine": common.machine_busy(),
            "cpu": {
                name: {pid: common.cpu_seconds(pid) or 0.0 for pid in pids}
                for name, pids in self._groups().items()
            },
            "children": os.times().children_user + os.times().children_system,
        }

    def since(self, start: dict[str, Any]) -> dict[str, float]:
        end = self.mark()
        wall = end["t"] - start["t"]
        used = {}
        for name, pids in end["cpu"].items():
            used[name] = sum(
                cpu - start["cpu"].get(name, {}).get(pid, 0.0) for pid, cpu in pids.items()
            )
        used["wrk"] = end["children"] - start["children"]  # wrk is our only waited-for child
        machine = end["machine"] - start["machine"]
        used["other"] = max(0.0, machine - sum(used.values()))
        used["wall"] = wall
        return used


# --- the service ------------------------------------------------------------------------------


def _service_env(mail_dir: Path, throttle_rate: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        DATABASE_URL=f"{PG_URL}/{DB}",
        REDIS_URL=f"{REDIS_BASE}/{REDIS_DB}",
        PORT=str(PORT),
        THROTTLE_USER_RATE=throttle_rate,
        DEBUG="false",
        WELCOME_DELAY_SECONDS="0",
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        CACHE_KEY_PREFIX=f"bench-http-{PORT}",
    )
    return env


def copy_checkout() -> None:
    common.copy_checkout(ROOT, SERVICE_DIR)


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


def seed_users(token: str, count: int) -> list[str]:
    ids = []
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    for i in range(count):
        body = json.dumps(
            {"email": f"seed-{i}@example.com", "first_name": "Seed", "last_name": f"User {i}"}
        )
        conn.request(
            "POST", "/v1/users", body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        response = conn.getresponse()
        payload = response.read()
        if response.status != 201:
            raise RuntimeError(f"seeding: {response.status} {payload[:300]!r}")
        ids.append(json.loads(payload)["id"])
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.close()
    return ids


def read_model_check(timeout: float = 120.0) -> dict[str, Any]:
    """Wait until every UserCreated has its users_user row; count what is missing."""
    sql = """
        SELECT (SELECT count(*) FROM events WHERE event_type = 'UserCreated'),
               (SELECT count(*) FROM users_user),
               (SELECT count(*) FROM events e
                 WHERE e.event_type = 'UserCreated' AND NOT EXISTS (
                     SELECT 1 FROM users_user u WHERE u.id = (e.data->>'user_id')::uuid))
    """
    started = time.monotonic()
    with _connect() as conn:
        while True:
            created, rows, missing = conn.execute(sql).fetchone()
            waited = time.monotonic() - started
            if missing == 0 or waited > timeout:
                return {
                    "user_created_events": created,
                    "read_model_rows": rows,
                    "missing_from_read_model": missing,
                    "waited_s": round(waited, 1),
                }
            time.sleep(0.5)


_BACKLOG_SQL = """
    SELECT (SELECT count(*) FROM checkpoints),
           (SELECT count(*) FROM checkpoints c WHERE EXISTS (
                SELECT 1 FROM events e WHERE (e.transaction_id, e.position)
                                             > (c.cursor_transaction_id, c.cursor_position))),
           (SELECT count(*) FROM sagas_instance WHERE status IN ('started', 'waiting'))
"""


def _broker_backlog(broker) -> int:
    """Tasks queued (any queue: kombu keeps each in a list) or delivered but not acked."""
    queued = sum(broker.llen(key) for key in broker.scan_iter(_type="list"))
    return queued + broker.hlen("unacked")


def wait_until_idle(meter: CpuMeter, timeout: float) -> dict[str, Any]:
    """Wait until the worker has nothing left to do and uses no CPU, and say what it cost.

    Idle: every subscriber's checkpoint at the head of the feed (what projection_status
    calls lag 0), no welcome saga open, no task queued or unacked, and the worker under
    5% of a core over one second, twice in a row.
    """
    import redis

    broker = redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}")
    started = meter.mark()
    quiet = 0
    state: dict[str, Any] = {}
    with _connect() as conn:
        while time.monotonic() - started["t"] < timeout:
            before = meter.mark()
            time.sleep(1.0)
            second = meter.since(before)
            worker_cores = second["celery"] / second["wall"]
            checkpoints, lagging, open_sagas = conn.execute(_BACKLOG_SQL).fetchone()
            state = {
                "checkpoints": checkpoints,
                "subscribers_behind": lagging,
                "open_sagas": open_sagas,
                "broker_tasks": _broker_backlog(broker),
                "worker_cores": round(worker_cores, 3),
            }
            idle = (
                checkpoints > 0
                and lagging == 0
                and open_sagas == 0
                and state["broker_tasks"] == 0
                and worker_cores < 0.05
            )
            quiet = quiet + 1 if idle else 0
            if quiet >= 2:
                break
    used = meter.since(started)
    return {
        "waited_s": round(used["wall"], 1),
        "idle": quiet >= 2,
        "worker_cpu_s": round(used["celery"], 2),
        "postgres_cpu_s": round(used["postgres"], 2),
        "last_check": state,
    }


# --- wrk ---------------------------------------------------------------------------------------


def run_wrk(
    endpoint: str, seconds: float, args, scripts: dict[str, Path], extra: list[str]
) -> dict[str, Any]:
    if endpoint == "post":  # a fresh prefix per run: emails stay unique across runs
        extra = [f"{extra[0]}-{uuid.uuid4().hex[:6]}", *extra[1:]]
    cmd = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{int(seconds)}s", "--latency",
        "--timeout", "10s", "-s", str(scripts[endpoint]),
        f"http://127.0.0.1:{PORT}{_PATHS[endpoint]}", "--", *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds_run = data["duration_us"] / 1e6
    errors = data["errors"]
    ok_statuses = {"health": "200", "get": "200", "post": "201"}[endpoint]
    return {
        "endpoint": endpoint,
        "requests": data["requests"],
        "seconds": round(seconds_run, 3),
        "requests_per_s": round(data["requests"] / seconds_run, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in data["latency_us"].items()},
        "statuses": data["statuses"],
        "ok": data["statuses"].get(ok_statuses, 0),
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "errors": errors,
    }


def measure(
    meter: CpuMeter, endpoint: str, args, scripts: dict[str, Path], extra: list[str]
) -> dict[str, Any]:
    """One wrk phase, with the CPU each part of the service used during it."""
    load = os.getloadavg()[0]
    mark = meter.mark()
    result = run_wrk(endpoint, args.seconds, args, scripts, extra)
    cpu = meter.since(mark)
    result.update(
        loadavg_1m=round(load, 2),
        cpu_ms_per_request={
            k: round(v * 1000 / max(1, result["requests"]), 3)
            for k, v in cpu.items()
            if k not in ("wall", "other")
        },
        cores={k: round(v / cpu["wall"], 2) for k, v in cpu.items() if k != "wall"},
        other_load_cores=round(cpu["other"] / cpu["wall"], 2),
    )
    return result


@contextlib.contextmanager
def worker_paused() -> Iterator[None]:
    """Stop the Celery worker (its pool too) and beat for the duration; resume them after."""
    pids = [
        pid
        for name in ("celery-worker.pid", "celery-beat.pid")
        if (root := _pidfile(name))
        for pid in common.process_tree(root)
    ]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def report(result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    line = (
        f"  round {result['round']} {result['endpoint']:6} {result['requests_per_s']:8.0f} req/s; "
        f"p50 {latency['p50']} p99 {latency['p99']} max {latency['max']} ms; statuses "
        f"{result['statuses']}; socket errors {result['socket_errors']}; CPU ms/req "
        f"{result['cpu_ms_per_request']}; worker {result['cores']['celery']} cores; other load "
        f"{result['other_load_cores']} cores"
    )
    if "drain_after" in result:
        drain = result["drain_after"]
        line += (
            f"; then the worker drained for {drain['waited_s']} s using {drain['worker_cpu_s']} "
            f"CPU s (idle: {drain['idle']})"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per endpoint per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--drain", type=float, default=180.0,
        help="after seeding and after each POST phase, wait at most this long for the worker "
        "to be idle",
    )  # fmt: skip
    parser.add_argument(
        "--paused-worker-post", action="store_true",
        help="in each round, one more POST phase with the Celery worker and beat stopped "
        "(SIGSTOP), resumed for the drain after: the web tier's own ceiling (reported as "
        f"{PAUSED_POST}, not a target)",
    )  # fmt: skip
    parser.add_argument(
        "--throttle-rate",
        default="100000000/minute",
        help="THROTTLE_USER_RATE of the service, high so that the bench measures the service "
        "rather than the limit (the throttle still runs on every request, and asks Redis "
        "once per lease of 32 requests, as at the default rate until a window is two-thirds "
        "used)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    mail_dir = common.mail_folder("bench-http-mail-")
    log = workdir / "service.log"
    env = _service_env(mail_dir, args.throttle_rate)
    print(f"copying the checkout to {SERVICE_DIR}; preparing {DB!r} and Redis db {REDIS_DB}")
    copy_checkout()
    prepare_servers()
    scripts = {}
    for endpoint in ENDPOINTS:
        scripts[endpoint] = workdir / f"{endpoint}.lua"
        own = WRK_SCRIPTS / f"{endpoint}.lua"
        scripts[endpoint].write_text(
            (WRK_SCRIPTS / "report.lua").read_text() + (own.read_text() if own.exists() else "")
        )
    nonce = uuid.uuid4().hex[:8]
    runs: list[dict[str, Any]] = []
    try:
        print("starting the service with scripts/up.sh", flush=True)
        run_script("up.sh", env, log)
        token = create_token(env)
        ids = seed_users(token, SEED_USERS)
        (workdir / "ids.txt").write_text("\n".join(ids) + "\n")
        seeded = read_model_check(timeout=60)
        print(f"seeded {len(ids)} users through the API; read model: {seeded}", flush=True)
        extra = {
            "health": [],
            "get": [str(workdir / "ids.txt"), token],
            "post": [nonce, token],
        }
        meter = CpuMeter()
        idle = wait_until_idle(meter, args.drain)
        print(f"after seeding: {idle}", flush=True)
        for endpoint in ENDPOINTS:  # warm-up: every worker process, every code path
            run_wrk(endpoint, 3, args, scripts, extra[endpoint])
        idle = wait_until_idle(meter, args.drain)
        print(f"after the warm-up: {idle}", flush=True)
        for round_no in range(args.rounds):
            # health and get alternate; post comes last, then the worker drains what it
            # started, so that health and get always run with the worker idle.
            order = ("health", "get", "post") if round_no % 2 == 0 else ("get", "health", "post")
            for endpoint in order:
                result = measure(meter, endpoint, args, scripts, extra[endpoint])
                result["round"] = round_no
                if endpoint == "post":
                    result["drain_after"] = wait_until_idle(meter, args.drain)
                runs.append(result)
                report(result)
            if args.paused_worker_post:
                with worker_paused():
                    result = measure(meter, "post", args, scripts, extra["post"])
                result.update(endpoint=PAUSED_POST, round=round_no)
                result["drain_after"] = wait_until_idle(meter, args.drain)
                runs.append(result)
                report(result)
        check = read_model_check()
        print(f"read model after the POST rounds: {check}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            run_script("down.sh", env, log)
    posted_ok = sum(r["ok"] for r in runs if r["endpoint"] in ("post", PAUSED_POST))
    unmeasured_posts = check["user_created_events"] - SEED_USERS - posted_ok
    emails = sum(
        1
        for path in mail_dir.glob("*")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("To: ")
    )
    summary = summarize(runs)
    summary["read_model"] = {
        **check,
        "seeded": SEED_USERS,
        "created_by_measured_posts": posted_ok,
        "created_by_warmup_posts": unmeasured_posts,
        "welcome_emails": emails,
    }
    summary["targets"] = targets(summary, check)
    environment = {
        **common.versions(PG_URL, ROOT),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
        "gunicorn": "as scripts/up.sh starts it",
        "service_log_tail": log.read_text(errors="replace")[-3000:],
    }
    result = {  # load average and other load per phase are in runs
        "benchmark": "bench/http_bench.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join(sys.argv),
        "settings": {**vars(args), "out": str(args.out), "seed_users": SEED_USERS},
        "environment": environment,
        "summary": summary,
        "runs": runs,
    }
    common.write_result(args.out, result)
    shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary (median of rounds)")
    for endpoint, row in summary["by_endpoint"].items():
        print(
            f"  {endpoint:6} {row['requests_per_s']:8.0f} req/s ({row['share_of_health']} of "
            f"health, paired {row['paired_share_of_health']}); p50 {row['p50_ms']} p99 "
            f"{row['p99_ms']} ms; failed {row['failed']}; CPU ms/req {row['cpu_ms_per_request']}"
            f"; CPU per create, worker's drain included: {row.get('cpu_ms_per_create')}"
        )
    print(f"  read model: {summary['read_model']}")
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} in {result['duration_s']} s")


def summarize(runs: list[dict]) -> dict[str, Any]:
    by = {}
    health_by_round = {r["round"]: r["requests_per_s"] for r in runs if r["endpoint"] == "health"}
    paused = any(r["endpoint"] == PAUSED_POST for r in runs)
    phases = [*ENDPOINTS, *([PAUSED_POST] if paused else [])]
    for endpoint in phases:
        mine = [r for r in runs if r["endpoint"] == endpoint]
        rates = [r["requests_per_s"] for r in mine]
        cpu_parts = mine[0]["cpu_ms_per_request"].keys() if mine else []
        by[endpoint] = {
            "requests_per_s": round(statistics.median(rates), 1),
            "rounds_requests_per_s": rates,
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in mine), 2),
            "p90_ms": round(statistics.median(r["latency_ms"]["p90"] for r in mine), 2),
            "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in mine), 2),
            "p99_ms_worst_round": max(r["latency_ms"]["p99"] for r in mine),
            "max_ms": max(r["latency_ms"]["max"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "failed": sum(r["requests"] - r["ok"] + r["socket_errors"] for r in mine),
            "statuses": _merge([r["statuses"] for r in mine]),
            "cpu_ms_per_request": {
                part: round(statistics.median(r["cpu_ms_per_request"][part] for r in mine), 3)
                for part in cpu_parts
            },
            "worker_cores": [r["cores"]["celery"] for r in mine],
            "other_load_cores": [r["other_load_cores"] for r in mine],
        }
        drains = [r["drain_after"] for r in mine if "drain_after" in r]
        if drains:
            # What the phase left for the worker: its CPU during the phase plus the drain.
            by[endpoint]["drain_after_s"] = [d["waited_s"] for d in drains]
            by[endpoint]["worker_cpu_ms_per_request_incl_drain"] = round(
                statistics.median(
                    (r["cpu_ms_per_request"]["celery"] * r["requests"] + d["worker_cpu_s"] * 1000)
                    / max(1, r["requests"])
                    for r, d in zip(mine, drains, strict=True)
                ),
                3,
            )
    health = by["health"]["requests_per_s"]
    for endpoint in phases:
        row = by[endpoint]
        row["share_of_health"] = round(row["requests_per_s"] / health, 3)
        paired = [
            r["requests_per_s"] / health_by_round[r["round"]]
            for r in runs
            if r["endpoint"] == endpoint and health_by_round.get(r["round"])
        ]
        row["paired_share_of_health"] = round(statistics.median(paired), 3)
        cpu_total = sum(row["cpu_ms_per_request"].get(k, 0) for k in ("gunicorn", "celery",
                                                                        "postgres"))  # fmt: skip
        row["service_cpu_ms_per_request"] = round(cpu_total, 3)
        if "worker_cpu_ms_per_request_incl_drain" in row:  # what a create costs in all
            parts = row["cpu_ms_per_request"]
            row["cpu_ms_per_create"] = round(
                parts.get("gunicorn", 0)
                + parts.get("postgres", 0)
                + row["worker_cpu_ms_per_request_incl_drain"],
                3,
            )
        row["cpu_bound_requests_per_s"] = round(CPUS * 1000 / cpu_total) if cpu_total else None
    return {"by_endpoint": by}


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def targets(summary: dict, check: dict) -> list[dict[str, Any]]:
    by = summary["by_endpoint"]
    failed = sum(row["failed"] for row in by.values())
    out = [
        ("GET /v1/users/{id} >= 50% of GET /health", by["get"]["share_of_health"], 0.5, True),
        ("POST /v1/users >= 25% of GET /health", by["post"]["share_of_health"], 0.25, True),
        *(
            (f"{e}: p99 < 100 ms at 32 connections", by[e]["p99_ms"], 100, False)
            for e in ("get", "post", "health")
        ),
        ("POST: CPU per create (gunicorn + worker + PostgreSQL) <= 5 ms",
         by["post"]["cpu_ms_per_create"], 5.0, False),
        ("no request failed", failed, 0, False),
        ("every created user is in the read model", check["missing_from_read_model"], 0, False),
    ]  # fmt: skip
    return [
        {"name": n, "value": v, "target": t,
         "met": v >= t if at_least else (v == 0 if t == 0 else v <= t)}
        for n, v, t, at_least in out
    ]  # fmt: skip


if __name__ == "__main__":
    main()
