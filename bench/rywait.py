"""Read-your-writes waits cannot starve the service: /health while one client floods waits.

Run (from the project root, about a minute)::

    .venv/bin/python bench/rywait.py [--waiters 32] [--seconds 20]

It copies the checkout to ``/tmp/benchsvc-rywait-<port>``, recreates the database
``bench_rywait`` (PostgreSQL at ``BENCH_PG_URL``, default
``postgres://postgres@127.0.0.1:5432``), empties Redis database 14 (``BENCH_REDIS_URL``;
``BENCH_REDIS_DB`` and ``BENCH_PORT`` move it and the port) and starts the service with
``scripts/up.sh`` on port 8814, as it is configured by
default (rate limits included: the flood is one client). It creates a user and waits
until it is in the read model, stops the Celery workers and beat (SIGSTOP), so the read
model will not reach what is written next, and updates the user: its position is one the
read model lacks. Then, for ``--seconds`` each:

1. reference: ``GET /health`` every 20 ms from one probe thread, nothing else;
2. flood: the same probe while ``--waiters`` client threads (one client, one token) send
   ``GET /v1/users/{id}?wait_for=<position>`` back to back.

It reports /health's latency in both phases (p50, p99, max) and what the waits answered
(how many, how long, ``Read-Model-Caught-Up``), resumes the workers and stops it all with
``scripts/down.sh``. Results go to ``bench/results/rywait.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_rywait"
PORT, REDIS_DB = common.service_slot(8814, 14)
SERVICE = Path(f"/tmp/benchsvc-rywait-{PORT}")
STOPPED = ("celery-worker.pid", "celery-mail.pid", "celery-beat.pid")


def request(method: str, path: str, token: str | None = None, body: Any = None) -> tuple:
    """(status, headers, parsed body, seconds) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    parsed = (
        json.loads(data)
        if data and response.getheader("Content-Type", "").find("json") >= 0
        else None
    )
    return response.status, dict(response.getheaders()), parsed, elapsed


def stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def probe(stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            status, _, _, elapsed = request("GET", "/health")
            out.append(elapsed if status == 200 else float("inf"))
        except OSError:
            out.append(float("inf"))
        time.sleep(0.02)


def flood(stop: threading.Event, path: str, token: str, out: list[tuple]) -> None:
    while not stop.is_set():
        status, headers, _, elapsed = request("GET", path, token)
        out.append((status, headers.get("Read-Model-Caught-Up"), elapsed))
        if status == 429:  # a well-behaved client waits as it is told
            time.sleep(float(headers.get("Retry-After", "1")))


def phase(seconds: float, waiters: int, path: str, token: str) -> tuple[list[float], list]:
    stop = threading.Event()
    health: list[float] = []
    waits: list[tuple] = []
    threads = [threading.Thread(target=probe, args=(stop, health))]
    threads += [
        threading.Thread(target=flood, args=(stop, path, token, waits)) for _ in range(waiters)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return health, waits


def signal_workers(sig: int) -> None:
    for name in STOPPED:
        for pid in common.process_tree(common.pidfile(SERVICE, name) or 0):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rywait.json")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        DATABASE_URL=f"{PG_URL}/{DB}", REDIS_URL=f"{REDIS_BASE}/{REDIS_DB}", PORT=str(PORT),
        DEBUG="false", LOG_LEVEL="WARNING", CACHE_KEY_PREFIX=f"bench-rywait-{PORT}",
    )  # fmt: skip
    log = Path(tempfile.mkdtemp(prefix="bench-rywait-")) / "service.log"
    common.copy_checkout(ROOT, SERVICE)
    with common.connect(PG_URL, "postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    import redis

    redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}").flushdb()
    try:
        common.run_script(SERVICE, "up.sh", env, log)
        token = common.create_token(SERVICE, env)
        body = {"email": "wait@example.com", "first_name": "Wai", "last_name": "Ter"}
        user = request("POST", "/v1/users", token, body)[2]
        deadline = time.monotonic() + 60
        while request("GET", f"/v1/users/{user['id']}", token)[0] != 200:  # projected
            if time.monotonic() > deadline:
                raise RuntimeError("the new user never reached the read model")
            time.sleep(0.05)
        signal_workers(signal.SIGSTOP)
        changed = request("PATCH", f"/v1/users/{user['id']}", token, {"first_name": "Later"})[2]
        path = f"/v1/users/{user['id']}?wait_for={changed['position']}"
        reference, _ = phase(args.seconds, 0, path, token)
        flooded, waits = phase(args.seconds, args.waiters, path, token)
    finally:
        signal_workers(signal.SIGCONT)
        with contextlib.suppress(Exception):
            common.run_script(SERVICE, "down.sh", env, log)
    answered = [w for w in waits if w[0] == 200]
    result = {
        "command": " ".join(sys.argv),
        "loadavg": os.getloadavg(),
        "waiters": args.waiters,
        "health_reference": stats(reference),
        "health_during_flood": stats(flooded),
        "waits": {
            **stats([w[2] for w in answered]),
            "throttled": sum(1 for w in waits if w[0] == 429),
            "errors": sum(1 for w in waits if w[0] not in (200, 429)),
            "caught_up_false": sum(1 for w in answered if w[1] == "false"),
            "answered_at_once": sum(1 for w in answered if w[2] < 0.1),
        },
        "target_health_p99_ms": 100,
    }
    result["target_met"] = result["health_during_flood"].get("p99_ms", 1e9) < 100
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
