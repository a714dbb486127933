"""Welcome emails through a slow mail relay: create -> email, backlog and CPU per create.

Run (one command, from the project root, about 4 minutes)::

    eval "$(bench/own_postgres.sh start)"   # the CPU of PostgreSQL is counted from /proc
    .venv/bin/python bench/welcome.py

It needs PostgreSQL at ``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``; on
this machine, and serving only the benchmark, for its CPU to be counted) and Redis at
``redis://127.0.0.1:6379`` (``BENCH_REDIS_URL``). It copies the checkout (tracked and
untracked, not ignored, files, plus ``.venv``) to ``/tmp/benchsvc-welcome``, DROPS and
recreates the database ``bench_welcome``, FLUSHES Redis database 13, starts a local SMTP
relay (``aiosmtpd``, ``tests/smtp.py``) that takes ``--relay-ms`` (200 ms) to accept each
message, and starts the whole service there with ``scripts/up.sh`` and its default worker
settings (gunicorn, the default-queue worker, the ``mail``-queue thread-pool worker, beat)
on port 8813, with ``WELCOME_DELAY_SECONDS=0``, ``DEBUG=false``, no throttling and Django's
SMTP backend pointed at the relay. ``scripts/down.sh`` stops it all at the end.

The load: ``POST /v1/users`` (bearer token, unique email) on an open-loop schedule, phase
after phase (``--phases``, default ``50x60,100x30``: 50 creates/s for 60 s, then 100/s
for 30 s), after ``--warmup`` s at the first rate, sent by a pool of client threads so
that a slow response never delays the next request. Per user, create -> email = (the
relay accepted the message) - (POST sent); the POST's own latency is shown beside it.
Every second, the open saga instances (started or waiting: the backlog) are counted.
After the load drains it checks that every user got exactly one email and one
``UserWelcomed``.

CPU per create: the CPU time (from /proc, reaped children included) of gunicorn, both
Celery workers, beat and every PostgreSQL process, from the first create until the last
email, divided by the creates. The reference, in the same run: as many ``GET /health``
requests (4 client threads, closed loop), measured the same way.
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
import sys
import tempfile
import threading
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
DB = "bench_welcome"
REDIS_DB = 13  # 12 is bench/soak.py's
PORT = 8813  # 8812 is bench/soak.py's
SERVICE_DIR = Path("/tmp/benchsvc-welcome")
PIDFILES = {
    "gunicorn": "gunicorn.pid",
    "worker": "celery-worker.pid",
    "mail_worker": "celery-mail.pid",
    "beat": "celery-beat.pid",
}
OPEN_SAGAS = "SELECT count(*) FROM sagas_instance WHERE status IN ('started', 'waiting')"


def _service_env(relay_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        DATABASE_URL=f"{PG_URL}/{DB}",
        REDIS_URL=f"{REDIS_BASE}/{REDIS_DB}",
        PORT=str(PORT),
        THROTTLE_USER_RATE="100000000/minute",
        DEBUG="false",
        WELCOME_DELAY_SECONDS="0",
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(relay_port),
        EMAIL_TIMEOUT="10",
        CACHE_KEY_PREFIX="bench-welcome",
    )
    return env


# --- the relay, in a process of its own ---------------------------------------------------------


def _relay(delay: float, port, count, stop, results) -> None:
    """A slow aiosmtpd relay; reports (recipient, accepted at) of every message at the end."""
    try:
        from tests.smtp import SmtpRelay

        relay = SmtpRelay(delay=delay)
        relay.start()
        port.value = relay.port
        while not stop.wait(0.2):
            count.value = len(relay.received)
        relay.stop()
        received = [(r.recipients, r.finished) for r in relay.received]
        results.put({"received": received, "connections": relay.handler.connections})
    except BaseException:
        results.put({"error": traceback.format_exc()})


# --- the load -----------------------------------------------------------------------------------


def schedule(phases: list[tuple[float, float]], warmup: float) -> list[tuple[float, int]]:
    """(offset from the start, phase) of every create; phase -1 is the warm-up."""
    slots, t = [], 0.0
    for phase, (rate, seconds) in [(-1, (phases[0][0], warmup)), *enumerate(phases)]:
        slots += [(t + k / rate, phase) for k in range(int(rate * seconds))]
        t += seconds
    return slots


def run_load(token: str, slots: list[tuple[float, int]], clients: int, nonce: str) -> list[dict]:
    """Open loop: create k is due at start + its offset, whichever thread sends it."""
    start = time.monotonic() + 0.5
    todo = iter(enumerate(slots))
    lock = threading.Lock()
    records: list[dict] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        while True:
            with lock:
                k, (offset, phase) = next(todo, (None, (0.0, 0)))
            if k is None:
                break
            due = start + offset
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            email = f"welcome-{nonce}-{k}@example.com"
            body = json.dumps({"email": email, "first_name": "Bench", "last_name": f"User {k}"})
            record = {"k": k, "phase": phase, "email": email, "due": due}
            record["sent"] = time.monotonic()
            for _ in (1, 2):  # gunicorn closes a connection idle for 2 s: reopen it
                try:
                    conn.request("POST", "/v1/users", body, headers)
                    response = conn.getresponse()
                    response.read()
                    record.update(status=response.status, response=time.monotonic())
                    break
                except (http.client.RemoteDisconnected, ConnectionError) as exc:
                    record["error"] = repr(exc)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            with lock:
                records.append(record)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def health_round(count: int, threads: int = 4) -> float:
    """``count`` GET /health, closed loop; returns the seconds it took."""
    left = iter(range(count))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        while True:
            with lock:
                if next(left, None) is None:
                    return
            conn.request("GET", "/health")
            conn.getresponse().read()

    started = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - started


class Sampler(threading.Thread):
    """Every second: open saga instances (the backlog) and emails accepted so far."""

    def __init__(self, relay_count) -> None:
        super().__init__(daemon=True)
        self.relay_count, self.samples, self.halt = relay_count, [], threading.Event()

    def run(self) -> None:
        with common.connect(PG_URL, DB, autocommit=True) as conn:
            while not self.halt.wait(1.0):
                backlog = conn.execute(OPEN_SAGAS).fetchone()[0]
                self.samples.append((time.monotonic(), backlog, self.relay_count.value))


# --- CPU ----------------------------------------------------------------------------------------


def cpu_now() -> dict[str, float | None]:
    out: dict[str, float | None] = {
        group: common.tree_cpu_seconds(common.pidfile(SERVICE_DIR, name) or 0)
        for group, name in PIDFILES.items()
    }
    try:
        out["postgresql"] = common.postgres_cpu_seconds(PG_URL)
    except (OSError, ValueError):  # not on this machine, or not ours to read
        out["postgresql"] = None
    return out


def cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, Any]:
    ms = {
        g: round((after[g] - before[g]) * 1000 / max(1, requests), 2)
        for g in before
        if before[g] is not None and after[g] is not None
    }
    return {**ms, "total": round(sum(ms.values()), 2)}


# --- checks and analysis ------------------------------------------------------------------------


def exactly_once(received: list, emails: set[str]) -> dict[str, Any]:
    with common.connect(PG_URL, DB, autocommit=True) as conn:
        welcomed = collections.Counter(
            n for (n,) in conn.execute(
                "SELECT count(w.event_id) FROM events c LEFT JOIN events w "
                "ON w.stream_id = c.stream_id AND w.event_type = 'UserWelcomed' "
                "WHERE c.event_type = 'UserCreated' "
                "GROUP BY c.stream_id"
            )
        )  # fmt: skip
        sagas = dict(conn.execute("SELECT status, count(*) FROM sagas_instance GROUP BY status"))
    sent = collections.Counter(r.lower() for recipients, _ in received for r in recipients)
    return {
        "users_created": sum(welcomed.values()),
        "users_welcomed_once": welcomed.get(1, 0),
        "users_with_one_email": sum(1 for e in emails if sent.get(e) == 1),
        "users_without_email": sum(1 for e in emails if not sent.get(e)),
        "users_with_duplicate_email": sum(1 for e in emails if sent.get(e, 0) > 1),
        "emails_to_unknown_addresses": sum(n for e, n in sent.items() if e not in emails),
        "saga_instances_by_status": sagas,
    }


def analyse(records: list[dict], accepted: dict[str, float], samples: list, phases) -> list:
    out = []
    for phase, (rate, seconds) in enumerate(phases):
        mine = [x for x in records if x["phase"] == phase]
        ok = [x for x in mine if x.get("status") == 201]
        email = [accepted[x["email"]] - x["sent"] for x in ok if x["email"] in accepted]
        lo, hi = min(x["due"] for x in mine), max(x["due"] for x in mine)
        backlog = [b for t, b, _ in samples if lo <= t <= hi]
        third = max(1, len(backlog) // 3)
        out.append(
            {
                "rate": rate,
                "seconds": seconds,
                "creates": len(mine),
                "creates_per_s_sent": round(len(mine) / (hi - lo), 1) if hi > lo else None,
                "failed_posts": len(mine) - len(ok),
                "create_to_email": common.stats_ms(email),
                "post_latency": common.stats_ms(
                    [x["response"] - x["sent"] for x in ok if "response" in x]
                ),
                "without_email": sum(1 for x in ok if x["email"] not in accepted),
                "backlog_max": max(backlog, default=None),
                "backlog_mean_first_third": round(sum(backlog[:third]) / third, 1),
                "backlog_mean_last_third": round(sum(backlog[-third:]) / third, 1),
            }
        )
    return out


def chart(records: list[dict], accepted: dict, samples: list, t0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [x for x in records if x.get("status") == 201 and x["email"] in accepted]
    fig, ax = plt.subplots(figsize=(12, 5))
    xs = [x["sent"] - t0 for x in ok]
    ys = [(accepted[x["email"]] - x["sent"]) * 1000 for x in ok]
    ax.scatter(xs, ys, s=3, alpha=0.5, color="#2ca02c", label="create -> email accepted by relay")
    ys = [(x["response"] - x["sent"]) * 1000 for x in ok]
    ax.scatter(xs, ys, s=3, alpha=0.3, color="#7f7f7f", label="POST latency")
    for y, color in ((1000, "orange"), (2000, "red")):
        ax.axhline(y, color=color, linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("seconds from the first create")
    ax.set_ylabel("ms (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", markerscale=4)
    twin = ax.twinx()
    twin.plot([t - t0 for t, _, _ in samples], [b for _, b, _ in samples], color="#1f77b4",
              linewidth=1, label="open saga instances (right axis)")  # fmt: skip
    twin.set_ylabel("open saga instances", color="#1f77b4")
    twin.set_ylim(bottom=0)
    twin.legend(fontsize=8, loc="upper right")
    ax.set_title(
        "Welcome emails through a relay taking 200 ms per message (targets p50 1 s, p99 2 s)"
    )
    common.save_chart(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="50x60,100x30", help="RATExSECONDS,...")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the first rate")
    parser.add_argument("--relay-ms", type=float, default=200.0)
    parser.add_argument("--clients", type=int, default=64, help="client threads")
    parser.add_argument("--drain", type=float, default=300.0, help="max wait after the load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "welcome.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "welcome.png")
    args = parser.parse_args()
    phases = [tuple(float(v) for v in p.split("x")) for p in args.phases.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="bench-welcome-"))
    log = workdir / "service.log"
    ctx = mp.get_context("spawn")
    port, count, stop, relay_results = (
        ctx.Value("i", 0),
        ctx.Value("i", 0),
        ctx.Event(),
        ctx.Queue(),
    )
    relay = ctx.Process(
        target=_relay, args=(args.relay_ms / 1000, port, count, stop, relay_results)
    )
    relay.start()
    while port.value == 0 and relay.is_alive():
        time.sleep(0.05)
    env = _service_env(port.value)
    print(f"relay on port {port.value}; copying the checkout to {SERVICE_DIR}; "
          f"preparing {DB!r} and Redis db {REDIS_DB}", flush=True)  # fmt: skip
    common.copy_checkout(ROOT, SERVICE_DIR)
    common.recreate_database(PG_URL, DB)
    common.flush_redis(f"{REDIS_BASE}/{REDIS_DB}")
    sampler = Sampler(count)
    try:
        common.run_script(SERVICE_DIR, "up.sh", env, log)
        token = common.create_token(SERVICE_DIR, env)
        slots = schedule(phases, args.warmup)
        print(f"load: {args.phases} (creates/s x s) after {args.warmup:.0f} s of warm-up; "
              f"load average {common.loadavg()}", flush=True)  # fmt: skip
        sampler.start()
        load = {"start": common.loadavg()}
        cpu0 = cpu_now()
        records = run_load(token, slots, args.clients, uuid.uuid4().hex[:8])
        created = sum(1 for r in records if r.get("status") == 201)
        deadline = time.monotonic() + args.drain
        while count.value < created and time.monotonic() < deadline:
            time.sleep(0.2)
        with common.connect(PG_URL, DB, autocommit=True) as conn:
            while conn.execute(OPEN_SAGAS).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.2)
        cpu1, load["end"] = cpu_now(), common.loadavg()
        sampler.halt.set()
        health_seconds = health_round(len(records))
        cpu2, load["after_health"] = cpu_now(), common.loadavg()
        stop.set()
        report = relay_results.get(timeout=60)
        if "error" in report:
            raise RuntimeError(report["error"])
    finally:
        stop.set()
        sampler.halt.set()
        with contextlib.suppress(Exception):
            common.run_script(SERVICE_DIR, "down.sh", env, log)
        relay.join(timeout=10)
        if relay.is_alive():
            relay.terminate()
    accepted = {r.lower(): t for recipients, t in report["received"] for r in recipients}
    emails = {r["email"] for r in records if r.get("status") == 201}
    check = exactly_once(report["received"], emails)
    summary = analyse(records, accepted, sampler.samples, phases)
    cpu = {
        "create": cpu_per_request(cpu0, cpu1, len(records)),
        "health_reference": cpu_per_request(cpu1, cpu2, len(records)),
        "health_round_seconds": round(health_seconds, 1),
    }
    first = summary[0]
    targets = [
        ("create -> email p50 < 1 s", first["create_to_email"]["p50_ms"], 1000),
        ("create -> email p99 < 2 s", first["create_to_email"]["p99_ms"], 2000),
        ("CPU per create <= 5 ms", cpu["create"]["total"], 5.0),
    ]
    result = {
        "benchmark": "bench/welcome.py",
        "git_commit": common.git_commit(ROOT),
        "cpus": os.cpu_count(),
        "settings": {
            "phases": phases,
            "warmup_s": args.warmup,
            "relay_ms": args.relay_ms,
            "clients": args.clients,
            "welcome_delay_seconds": 0,
        },
        "load_average": load,
        "phases": summary,
        "cpu_ms_per_request": cpu,
        "exactly_once": check,
        "relay_connections": report["connections"],
        "targets": [
            {"name": f"{n} at {phases[0][0]:.0f}/s", "value": v, "met": v is not None and v <= t}
            for n, v, t in targets
        ]
        + [
            {
                "name": "every user exactly one email and one UserWelcomed",
                "value": check,
                "met": check["users_with_one_email"] == len(emails) == check["users_welcomed_once"]
                and not check["emails_to_unknown_addresses"],
            }
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(records, accepted, sampler.samples, min(r["sent"] for r in records), args.chart)
    for p in summary:
        e = p["create_to_email"]
        print(f"  {p['rate']:.0f}/s x {p['seconds']:.0f} s: {p['creates']} creates "
              f"({p['creates_per_s_sent']}/s sent, {p['failed_posts']} failed); create -> email "
              f"p50 {e['p50_ms']} p99 {e['p99_ms']} max {e['max_ms']} ms; POST p50 "
              f"{p['post_latency']['p50_ms']} ms; backlog first/last third "
              f"{p['backlog_mean_first_third']}/{p['backlog_mean_last_third']}, max "
              f"{p['backlog_max']}")  # fmt: skip
    print(f"  CPU ms per create {cpu['create']}; per GET /health {cpu['health_reference']}")
    print(f"  exactly once: {json.dumps(check)}; load average {load}")
    for t in result["targets"]:
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['name']}: {t['value']}")
    print(f"wrote {args.out} and {args.chart}; service log {log}")


if __name__ == "__main__":
    main()
