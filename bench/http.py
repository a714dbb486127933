"""HTTP throughput and latency: POST /v1/users and GET /v1/users/{id} vs GET /health.

Run (one command, from the project root, about 4 minutes)::

    .venv/bin/python bench/http.py

It needs ``wrk`` (``apt-get install -y wrk``), PostgreSQL at
``postgres://postgres@127.0.0.1:5432`` (``BENCH_PG_URL``) and Redis at
``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). It copies the checkout (tracked and
untracked, not ignored, files, plus ``.venv``) to ``/tmp/benchsvc-http`` so that its pid
files cannot collide with anyone's, DROPS and recreates the database ``bench_http``,
FLUSHES Redis database 11, and starts the whole service there with ``scripts/up.sh``
(gunicorn with 2 sync workers, the Celery worker and beat: the settings up.sh uses) on
port 8811 with ``DEBUG=false``, ``THROTTLE_USER_RATE=100000000/minute`` (so the bench
measures the service, not the rate limit) and ``WELCOME_DELAY_SECONDS=0``. It stops
everything with ``scripts/down.sh`` at the end, whatever happens.

After creating an API token (``manage.py create_api_token``) and 1,000 users through the
API, wrk drives the server over loopback with 32 connections (2 threads), in
``--rounds`` rounds (default 3) of ``--seconds`` (default 10) per endpoint, the order
rotating each round, after a 3-second warm-up of each:

* health  GET /health: the same server, the same gunicorn, no authentication, no
          database: the ceiling.
* get     GET /v1/users/{id} with a bearer token, ids drawn at random from the 1,000.
* post    POST /v1/users with a bearer token, a unique email per request (wrk Lua).

Each POST run leaves welcome sagas for the worker; before each GET and health run the
bench waits (at most ``--drain`` s, 120) until the worker is idle, so that it measures
the web tier, not the backlog (``--no-drain`` to skip). For each run it records
requests/s, latency percentiles (wrk's), every status code, socket errors, and the CPU
spent per request by gunicorn, the Celery worker, the PostgreSQL backends of
``bench_http`` and wrk, plus what everything else on the machine used. At the end it
waits for the read model and checks that every user created (every 201) is in it.
Results go to ``bench/results/http.json`` (gitignored), the chart to
``docs/img/http.png``.
"""

# This file is bench/http.py, and bench/ is sys.path[0] for every script in it, so it
# shadows the standard library's ``http`` package: ``from http import cookies`` (Django)
# in bench/append.py or bench/rebuild.py would import this file. Imported under that
# name, it puts the real package in its place (the import system returns what
# sys.modules holds); run as a script, it takes its folder off sys.path first.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "http":
    import importlib.machinery
    import importlib.util

    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    _spec = importlib.machinery.PathFinder.find_spec("http", _path)
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _real
    _spec.loader.exec_module(_real)
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(_HERE).parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_http"
REDIS_DB = 11
PORT = 8811
SERVICE_DIR = Path("/tmp/benchsvc-http")
ENDPOINTS = ("health", "get", "post")
SEED_USERS = 1000
CPUS = os.cpu_count() or 1

# wrk scripts. done() prints one JSON line (prefixed) that the bench parses.
_LUA_COMMON = r"""
counts = {}  -- global: done() reads it from each thread with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for status, n in pairs(c) do
      statuses[tostring(status)] = (statuses[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p75":%d,"p90":%d,' ..
    '"p99":%d,"p999":%d,"max":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency.min, latency.mean, latency.stdev, latency:percentile(50),
    latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, table.concat(parts, ",")))
end
"""

_LUA = {
    "health": "",
    "get": r"""
local ids = {}
function init(args)
  for line in io.lines(args[1]) do table.insert(ids, line) end
  math.randomseed(os.time() + (tid or 0) * 7919)
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end
function request()
  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)])
end
""",
    "post": r"""
local n = 0
local nonce = ""
function init(args)
  nonce = args[1]
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  local body = string.format(
    '{"email":"http-%s-t%d-%d@example.com","first_name":"Bench","last_name":"User %d"}',
    nonce, tid or 0, n, n)
  return wrk.format(nil, "/v1/users", nil, body)
end
""",
}
_PATHS = {"health": "/health", "get": "/v1/users", "post": "/v1/users"}


def _pg_params(dbname: str) -> dict[str, Any]:
    from urllib.parse import urlparse

    url = urlparse(PG_URL)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password or "",
        "dbname": dbname,
    }


def _connect(dbname: str = DB):
    import psycopg

    return psycopg.connect(**_pg_params(dbname), autocommit=True)


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += parents.get(current, [])
    return out


def _pidfile(name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((SERVICE_DIR / ".data" / "run" / name).read_text().split()[0])
    return None


class CpuMeter:
    """CPU used by each part of the service (and by everything else) between marks."""

    def __init__(self) -> None:
        self.monitor = _connect()

    def _groups(self) -> dict[str, list[int]]:
        groups = {}
        for name, pidfile in (("gunicorn", "gunicorn.pid"), ("celery", "celery-worker.pid")):
            pid = _pidfile(pidfile)
            groups[name] = _tree(pid) if pid else []
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
            "machine": _machine_busy(),
            "cpu": {
                name: {pid: _cpu_seconds(pid) or 0.0 for pid in pids}
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
        CACHE_KEY_PREFIX="bench-http",
    )
    return env


def copy_checkout() -> None:
    shutil.rmtree(SERVICE_DIR, ignore_errors=True)
    SERVICE_DIR.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = SERVICE_DIR / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    subprocess.run(["cp", "-a", str(ROOT / ".venv"), str(SERVICE_DIR / ".venv")], check=True)


def prepare_servers() -> None:
    import redis

    with _connect("postgres") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}").flushdb()


def run_script(name: str, env: dict[str, str], log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ scripts/{name}\n")
        out.flush()
        subprocess.run(
            [str(SERVICE_DIR / "scripts" / name)], cwd=SERVICE_DIR, env=env, stdout=out,
            stderr=subprocess.STDOUT, check=True, timeout=300,
        )  # fmt: skip


def create_token(env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(SERVICE_DIR / ".venv" / "bin" / "python"), "manage.py", "create_api_token", "bench",
         "--create-user"],
        cwd=SERVICE_DIR, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


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


def quiesce(timeout: float) -> float:
    """Wait until the Celery worker has nothing left to do (queue empty, no saga open)."""
    import redis

    broker = redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}")
    started = time.monotonic()
    with _connect() as conn:
        while time.monotonic() - started < timeout:
            open_sagas = conn.execute(
                "SELECT count(*) FROM sagas_instance WHERE status IN ('started', 'waiting')"
            ).fetchone()[0]
            if open_sagas == 0 and broker.llen("celery") == 0:
                break
            time.sleep(0.5)
    return round(time.monotonic() - started, 1)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per endpoint per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--drain", type=float, default=120.0,
        help="before each GET and health run, wait at most this long for the worker to be idle",
    )  # fmt: skip
    parser.add_argument("--no-drain", action="store_true", help="do not wait for the worker")
    parser.add_argument(
        "--throttle-rate",
        default="100000000/minute",
        help="THROTTLE_USER_RATE of the service. DRF's throttle keeps one timestamp per request "
        "of the window: with /minute at hundreds of requests/s that list is tens of "
        "thousands long and read and written on every request; /second keeps it short",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "http.png")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    mail_dir = workdir / "mail"
    mail_dir.mkdir()
    log = workdir / "service.log"
    env = _service_env(mail_dir, args.throttle_rate)
    print(f"copying the checkout to {SERVICE_DIR}; preparing {DB!r} and Redis db {REDIS_DB}")
    copy_checkout()
    prepare_servers()
    scripts = {}
    for endpoint in ENDPOINTS:
        scripts[endpoint] = workdir / f"{endpoint}.lua"
        scripts[endpoint].write_text(_LUA_COMMON + _LUA[endpoint])
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
        for endpoint in ENDPOINTS:  # warm-up: every worker process, every code path
            run_wrk(endpoint, 3, args, scripts, extra[endpoint])
        for round_no in range(args.rounds):
            order = ENDPOINTS[round_no % 3 :] + ENDPOINTS[: round_no % 3]
            for endpoint in order:
                # A POST run leaves welcome sagas behind: let the worker finish them, so
                # that it does not compete with the GET and health runs for the 2 cores.
                drained = 0.0 if args.no_drain or endpoint == "post" else quiesce(args.drain)
                load = os.getloadavg()[0]
                mark = meter.mark()
                result = run_wrk(endpoint, args.seconds, args, scripts, extra[endpoint])
                cpu = meter.since(mark)
                result.update(
                    round=round_no,
                    drained_before_s=drained,
                    loadavg_1m=round(load, 2),
                    cpu_ms_per_request={
                        k: round(v * 1000 / max(1, result["requests"]), 3)
                        for k, v in cpu.items()
                        if k not in ("wall", "other")
                    },
                    other_load_cores=round(cpu["other"] / cpu["wall"], 2),
                )
                runs.append(result)
                print(
                    f"  round {round_no} {endpoint:6} {result['requests_per_s']:8.0f} req/s; p50 "
                    f"{result['latency_ms']['p50']} p99 {result['latency_ms']['p99']} max "
                    f"{result['latency_ms']['max']} ms; statuses {result['statuses']}; socket "
                    f"errors {result['socket_errors']}; CPU ms/req {result['cpu_ms_per_request']}; "
                    f"other load {result['other_load_cores']} cores",
                    flush=True,
                )
        check = read_model_check()
        print(f"read model after the POST rounds: {check}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            run_script("down.sh", env, log)
    posted_ok = sum(r["ok"] for r in runs if r["endpoint"] == "post")
    warmup_posts = check["user_created_events"] - SEED_USERS - posted_ok
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
        "created_by_warmup_posts": warmup_posts,
        "welcome_emails": emails,
    }
    summary["targets"] = targets(summary, check)
    environment = {
        "cpus": CPUS,
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
        "gunicorn": "2 sync workers (scripts/up.sh defaults)",
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "service_log_tail": log.read_text(errors="replace")[-3000:],
    }
    result = {
        "benchmark": "bench/http.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": args.connections,
            "threads": args.threads,
            "seed_users": SEED_USERS,
            "throttle_user_rate": args.throttle_rate,
        },
        "environment": environment,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(summary, runs, args.chart)
    shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary (median of rounds)")
    for endpoint in ENDPOINTS:
        row = summary["by_endpoint"][endpoint]
        print(
            f"  {endpoint:6} {row['requests_per_s']:8.0f} req/s ({row['share_of_health']} of "
            f"health, paired {row['paired_share_of_health']}); p50 {row['p50_ms']} p99 "
            f"{row['p99_ms']} ms; failed {row['failed']}"
        )
    print(f"  read model: {summary['read_model']}")
    for t in summary["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart} in {result['duration_s']} s")


def summarize(runs: list[dict]) -> dict[str, Any]:
    by = {}
    health_by_round = {r["round"]: r["requests_per_s"] for r in runs if r["endpoint"] == "health"}
    for endpoint in ENDPOINTS:
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
            "other_load_cores": [r["other_load_cores"] for r in mine],
        }
    health = by["health"]["requests_per_s"]
    for endpoint in ENDPOINTS:
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
    out = [
        {
            "name": "GET /v1/users/{id} >= 50% of GET /health",
            "value": by["get"]["share_of_health"],
            "paired": by["get"]["paired_share_of_health"],
            "target": 0.5,
        },
        {
            "name": "POST /v1/users >= 25% of GET /health",
            "value": by["post"]["share_of_health"],
            "paired": by["post"]["paired_share_of_health"],
            "target": 0.25,
        },
    ]
    for endpoint in ("get", "post", "health"):
        out.append(
            {
                "name": f"{endpoint}: p99 < 100 ms at 32 connections",
                "value": by[endpoint]["p99_ms"],
                "worst_round": by[endpoint]["p99_ms_worst_round"],
                "target": 100,
            }
        )
    for t in out:
        t["met"] = t["value"] < t["target"] if "p99" in t["name"] else t["value"] >= t["target"]
    failed = sum(by[e]["failed"] for e in ENDPOINTS)
    out.append({"name": "no request failed", "value": failed, "target": 0, "met": failed == 0})
    missing = check["missing_from_read_model"]
    out.append(
        {
            "name": "every created user is in the read model",
            "value": missing,
            "target": 0,
            "met": missing == 0,
        }
    )
    return out


def chart(summary: dict, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = summary["by_endpoint"]
    labels = {
        "health": "GET /health\n(ceiling)",
        "get": "GET /v1/users/{id}",
        "post": "POST /v1/users",
    }
    colors = {"health": "#7f7f7f", "get": "#1f77b4", "post": "#ff7f0e"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ax = axes[0]
    xs = range(len(ENDPOINTS))
    ys = [by[e]["requests_per_s"] for e in ENDPOINTS]
    bars = ax.bar(xs, ys, color=[colors[e] for e in ENDPOINTS])
    for e, bar in zip(ENDPOINTS, bars, strict=True):
        rounds = by[e]["rounds_requests_per_s"]
        x = bar.get_x() + bar.get_width() / 2
        ax.plot([x] * len(rounds), rounds, "k.", markersize=4)
        ax.annotate(f"{by[e]['requests_per_s']:.0f}/s\n{by[e]['share_of_health']:.0%} of health",
                    (x, bar.get_height()), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(list(xs), [labels[e] for e in ENDPOINTS], fontsize=8)
    ax.margins(y=0.12)
    ax.set_ylabel("requests/s (median; dots = rounds)")
    ax.set_title("Throughput, 32 connections, 2 sync workers")
    ax.grid(alpha=0.3, axis="y")

    ax = axes[1]
    width = 0.25
    for k, q in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        vals = [by[e][q] for e in ENDPOINTS]
        ax.bar([x + (k - 1) * width for x in xs], vals, width, label=q.replace("_ms", ""),
               color=["#c6dbef", "#6baed6", "#08519c"][k])  # fmt: skip
    ax.axhline(100, color="red", linestyle=":", linewidth=1)
    ax.set_xticks(list(xs), [labels[e] for e in ENDPOINTS], fontsize=8)
    ax.set_ylabel("latency (ms, median of rounds)")
    ax.set_title("Latency (target p99 < 100 ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")

    ax = axes[2]
    parts = ("gunicorn", "postgres", "celery", "wrk")
    part_colors = {
        "gunicorn": "#2ca02c",
        "postgres": "#9467bd",
        "celery": "#8c564b",
        "wrk": "#bbbbbb",
    }
    bottom = [0.0] * len(ENDPOINTS)
    for part in parts:
        vals = [by[e]["cpu_ms_per_request"].get(part, 0) for e in ENDPOINTS]
        ax.bar(xs, vals, bottom=bottom, color=part_colors[part], label=part)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(list(xs), [labels[e] for e in ENDPOINTS], fontsize=8)
    ax.set_ylabel("CPU ms per request")
    ax.set_title("Where the CPU goes (2 cores)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
