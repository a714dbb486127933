"""What the metrics cost: GET /v1/users/{id} and POST /v1/users with METRICS_ENABLED on
and off, in one run, rounds interleaved.

Run (from the project root, about 3 minutes with the defaults)::

    .venv/bin/python bench/metrics_cost.py [--rounds 3] [--seconds 10]

It needs ``wrk``, PostgreSQL at ``postgres://postgres@127.0.0.1:5432`` (``BENCH_PG_URL``)
and Redis at ``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). It copies the checkout to
``/tmp/benchsvc-metrics``, DROPS and recreates the database ``bench_metrics``, FLUSHES
Redis database 12 (``BENCH_REDIS_DB``), and starts the whole service there with
``scripts/up.sh`` (gunicorn as up.sh starts it, the Celery workers and beat) on port
8821, ``DEBUG=false``, no effective rate limit and no welcome delay. Each round starts
the service once with metrics on and once off (the order alternating between rounds),
warms up, then runs wrk (2 threads, 32 connections) on GET and on POST; scripts/down.sh stops
it after each and at the end, whatever happens. The figure is the ratio off/on of the
requests per second, per round and the median of the rounds; the target is at most 5%.
Results go to ``bench/results/metrics_cost.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ROOT = Path(__file__).resolve().parent.parent
SERVICE = Path("/tmp/benchsvc-metrics")
DB = "bench_metrics"
PORT = 8821
URL = f"http://127.0.0.1:{PORT}"
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_DB = os.environ.get("BENCH_REDIS_DB", "12")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + f"/{REDIS_DB}"
METRICS_TOKEN = "bench-metrics-token"
SEED_USERS = 200

GET_LUA = """
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
request = function()
  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)])
end
"""

POST_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local email = string.format("%s-%d-%d@example.com", os.getenv("BENCH_RUN"), tid, n)
  return wrk.format(nil, "/v1/users", nil,
    '{"email":"' .. email .. '","first_name":"Ben","last_name":"Ch"}')
end
"""


def service_env(metrics: bool) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "PORT"}
    }
    env.update(
        DATABASE_URL=f"{PG_URL.rstrip('/')}/{DB}",
        REDIS_URL=REDIS_URL,
        PORT=str(PORT),
        DEBUG="false",
        METRICS_ENABLED="true" if metrics else "false",
        METRICS_TOKEN=METRICS_TOKEN,
        THROTTLE_USER_RATE="100000000/minute",
        WELCOME_DELAY_SECONDS="0",
        EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend",
    )
    return env


def prepare() -> None:
    common.copy_checkout(ROOT, SERVICE)
    with common.connect(PG_URL, "postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def seed(token: str, count: int) -> list[str]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    ids = []
    for n in range(count):
        body = {"email": f"seed{n}-{uuid.uuid4().hex[:6]}@example.com", "first_name": "S",
                "last_name": "Eed"}  # fmt: skip
        reply = session.post(f"{URL}/v1/users", json=body, timeout=30)
        reply.raise_for_status()
        ids.append(reply.json()["id"])
    # GETs read the read model: wait until the projection has every seeded user.
    deadline = time.monotonic() + 120
    while session.get(f"{URL}/v1/users/{ids[-1]}", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the seeded users never reached the read model")
        time.sleep(0.2)
    return ids


def wrk(script: Path, seconds: float, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{int(seconds)}s", "-s", str(script), URL],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {
        "rps": float(rate.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def metrics_answer() -> int:
    import requests

    reply = requests.get(
        f"{URL}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    return reply.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    log = workdir / "service.log"
    scripts = {"get": workdir / "get.lua", "post": workdir / "post.lua"}
    scripts["get"].write_text(GET_LUA)
    scripts["post"].write_text(POST_LUA)
    print(f"copying the checkout to {SERVICE}; service log: {log}", flush=True)
    prepare()
    results: list[dict[str, object]] = []
    try:
        env_on = service_env(metrics=True)
        common.run_script(SERVICE, "up.sh", env_on, log)
        token = common.create_token(SERVICE, env_on)
        ids_file = workdir / "ids.txt"
        ids_file.write_text("\n".join(seed(token, SEED_USERS)) + "\n")
        common.run_script(SERVICE, "down.sh", env_on, log)
        wrk_env = {**os.environ, "BENCH_TOKEN": token, "BENCH_IDS": str(ids_file)}

        for round_no in range(args.rounds):
            order = [True, False] if round_no % 2 == 0 else [False, True]
            for metrics in order:
                mode = "on" if metrics else "off"
                env = service_env(metrics)
                common.run_script(SERVICE, "up.sh", env, log)
                try:
                    assert metrics_answer() == (200 if metrics else 404)
                    for phase in ("get", "post"):
                        # Each wrk run its own prefix: a repeated email would be a cheap 409.
                        wrk(scripts[phase], args.warmup, {**wrk_env, "BENCH_RUN": uuid.uuid4().hex})
                        run_env = {**wrk_env, "BENCH_RUN": uuid.uuid4().hex}
                        measured = wrk(scripts[phase], args.seconds, run_env)
                        results.append({"round": round_no, "metrics": mode, "phase": phase,
                                        **measured})  # fmt: skip
                        print(f"round {round_no} metrics {mode:3} {phase:4} "
                              f"{measured['rps']:8.0f} req/s  non-2xx {measured['non_2xx']}",
                              flush=True)  # fmt: skip
                finally:
                    common.run_script(SERVICE, "down.sh", env, log)
    finally:
        common.run_script(SERVICE, "down.sh", service_env(True), log)

    summary = {}
    for phase in ("get", "post"):
        ratios = []
        for round_no in range(args.rounds):
            rate = {r["metrics"]: r["rps"] for r in results
                    if r["round"] == round_no and r["phase"] == phase}  # fmt: skip
            ratios.append(rate["on"] / rate["off"])
        on, off = (
            statistics.median(r["rps"] for r in results if (r["phase"], r["metrics"]) == (phase, m))
            for m in ("on", "off")
        )
        summary[phase] = {"on_rps": on, "off_rps": off, "on_over_off_per_round": ratios,
                          "on_over_off_median": statistics.median(ratios)}  # fmt: skip
        print(
            f"{phase}: metrics on {on:.0f} req/s, off {off:.0f} req/s; on/off per round "
            f"{', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}"
        )
    out = ROOT / "bench" / "results" / "metrics_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results, "summary": summary},
                              indent=2))  # fmt: skip
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
