"""Instructions per request in the web process, counted by callgrind: GET /v1/users/{id}
and POST /v1/users against GET /health, with no load generator, gunicorn or second core
involved.

Run (from the project root, about 4 minutes; needs ``apt-get install -y valgrind``)::

    .venv/bin/python bench/instructions.py
    .venv/bin/python bench/instructions.py --project /tmp/prev   # another checkout, A/B
    .venv/bin/python bench/instructions.py --endpoints post        # one endpoint
    .venv/bin/python bench/instructions.py --endpoints get --compare /tmp/plain  # a bend's gain

``--compare`` measures other checkouts in the same run, against the same database, and
prints each one's count beside the first project's: how a framework bend is judged
(docs/framework-bends.md), with the bend in ``--project`` and without it in the other.

Under callgrind a checkout takes minutes; on a machine so loaded that it cannot finish,
``--cpu`` runs every checkout at once, natively, and takes a request's cost as the least
CPU time of any ``--batch`` of requests after the warm-up (noise only ever adds time).

Requests/s on this VM drift by a third within one run (docs/benchmarks.md); an
instruction count does not: the same code and inputs give the same count, whatever else
the machine does. What it leaves out is the kernel's share (socket calls, context
switches) and the servers' (PostgreSQL, Redis), which the HTTP benchmark measures.

It uses PostgreSQL at ``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``),
where it DROPS and recreates the database ``--database`` (``bench_instructions``), and
Redis database ``--redis-db`` (12) of ``BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379``), which it FLUSHES. It migrates
the database, creates an API token and one user, and projects it. Then, for each
endpoint, it runs one process under ``valgrind --tool=callgrind`` that serves
``--warmup`` requests and then ``--requests`` more through Django's WSGI handler (as
gunicorn calls it), and one that serves only the warm-up; the difference, divided by
``--requests``, is what one warm request costs, start-up and first-request work
cancelled. Beside it, the CPU time PostgreSQL's backend spent on the same requests (from
``/proc/<pid>/schedstat``, so not steady like the count, but the share a prepared
statement saves is there and not in the web process). Settings as ``bench/http_bench.py``
runs the service: ``DEBUG=false``, the rate limit on but far above the load. Results go
to ``bench/results/instructions.json``.

Each POST creates a user with a new email (the database grows by one user per request,
which costs PostgreSQL, not this process). No worker runs: the subscribers' wake-up marks
are set for an hour before the first request, so every create asks Redis for them (as
under load, while a wake-up is queued) and none queues a Celery task, which keeps the
count the same from run to run. Under load a create queues one now and then, whenever a
worker's task has started and cleared the mark; that cost is left out.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
import common  # noqa: E402  (bench/common.py, next to this script)

DATABASE = "bench_instructions"
REDIS_DB = 12
ENDPOINTS = ("health", "get", "post")
PG = "postgres://postgres@127.0.0.1:5432"


def service_env(
    pg_url: str, redis_url: str, project: Path, database: str, redis_db: int
) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"{pg_url.rstrip('/')}/{database}",
        "REDIS_URL": f"{redis_url.rstrip('/')}/{redis_db}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "THROTTLE_USER_RATE": "100000000/minute",
        "PYTHONPATH": str(project),
        "PYTHONHASHSEED": "0",  # the same dict layouts, so the same count, every run
        "BENCH_PG_URL": pg_url,
        # Fixed, so that every run encrypts alike; a benchmark's own, not a secret.
        "PERSONAL_DATA_MASTER_KEYS": "YmVuY2gtaW5zdHJ1Y3Rpb25zLW1hc3Rlci1rZXktMzI=",
        "PERSONAL_DATA_HMAC_KEY": "bench-instructions-hmac-key",
    }


def setup(project: Path, env: dict[str, str], database: str) -> dict[str, str]:
    """A fresh database with a token and one projected user (not under valgrind)."""
    with common.connect(env["BENCH_PG_URL"], "postgres", autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        pg.execute(f"CREATE DATABASE {database}")
    python = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=project, env=env, check=True)
    out = subprocess.run(
        [python, __file__, "--child", "setup"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def child_setup() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache

    from eventstore import subscribers, subscriptions
    from users import handlers
    from users.authentication import issue_token
    from users.commands import CreateUser
    from users.models import UserRecord

    cache.clear()
    client = get_user_model().objects.create_user("bench", password="bench-pass-1234")
    _, token = issue_token(client, "instructions")
    result = handlers.handle(
        CreateUser(email="ada@example.com", first_name="Ada", last_name="Lovelace")
    )
    # Other databases' open transactions on the same server hold back the visibility
    # horizon: catch up until the user is projected.
    deadline = time.monotonic() + 60
    while not UserRecord.objects.filter(id=result.user.id).exists():
        if time.monotonic() > deadline:
            sys.exit("the user was not projected within a minute")
        subscriptions.catch_up(subscribers.get("users"))
    print(json.dumps({"token": token, "user_id": str(result.user.id)}))


def child_serve(
    endpoint: str, count: int, token: str, user_id: str, pg_cpu: str, batch: int = 0
) -> None:
    """Serve ``count`` requests through the WSGI handler, as gunicorn would call it, and
    write the nanoseconds of CPU its PostgreSQL backend has run to the file ``pg_cpu``;
    with ``batch``, also this process's CPU time at every ``batch`` requests (``--cpu``)."""
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection

    handler = WSGIHandler()
    path = {"health": "/health", "get": f"/v1/users/{user_id}", "post": "/v1/users"}[endpoint]
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8811",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8811",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if endpoint != "health":
        base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    bodies = [b""] * count
    if endpoint == "post":
        _hold_wake_up_marks()
        base.update(REQUEST_METHOD="POST", CONTENT_TYPE="application/json")
        run = uuid.uuid4().hex[:12]  # every email new, in this run and the next
        bodies = [
            json.dumps(
                {"email": f"{run}-{i:06}@example.com", "first_name": "Ada", "last_name": "Byron"}
            ).encode()
            for i in range(count)
        ]
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        statuses.append(status)

    marks: list[tuple[int, int]] = []

    def mark() -> None:
        backend = connection.connection.info.backend_pid if connection.connection else None
        ran = Path(f"/proc/{backend}/schedstat").read_text().split()[0] if backend else "0"
        marks.append((time.process_time_ns(), int(ran)))

    for served, body in enumerate(bodies):
        if batch and served % batch == 0:
            mark()
        environ = {**base, "wsgi.input": io.BytesIO(body)}
        if body:  # a GET's environ stays as in earlier sessions' counts
            environ["CONTENT_LENGTH"] = str(len(body))
        response = handler(environ, start_response)
        for _chunk in response:
            pass
        response.close()
    mark()
    Path(pg_cpu).write_text(json.dumps(marks) if batch else str(marks[-1][1]))
    expected = "201" if endpoint == "post" else "200"
    if any(not status.startswith(expected) for status in statuses):
        sys.exit(f"not every request answered {expected}: {sorted(set(statuses))}")


def _hold_wake_up_marks() -> None:
    """Mark a wake-up of every subscriber as queued, for an hour (see the docstring)."""
    from django.core.cache import cache

    from eventstore import subscribers, wakeups

    for subscriber in subscribers.all_subscribers():
        for partition in subscribers.partitions_of(subscriber):
            cache.set(wakeups.wake_key(subscriber.name, partition.number), 1, 3600)


def count_instructions(
    project: Path, env: dict[str, str], endpoint: str, count: int, data: dict[str, str]
) -> tuple[int, int]:
    """Instructions callgrind counts in a whole process serving ``count`` requests, and
    the nanoseconds of CPU its PostgreSQL backend ran."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        pg_cpu = Path(tmp) / "pg_cpu"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--trace-children=no",
                str(ROOT / ".venv" / "bin" / "python"),
                __file__,
                "--child",
                "serve",
                endpoint,
                str(count),
                data["token"],
                data["user_id"],
                str(pg_cpu),
            ],
            cwd=project,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if totals is None:
            raise RuntimeError(f"no totals in {out}")
        return int(totals.group(1)), int(pg_cpu.read_text() or 0)


def measure(
    projects: list[Path], env: dict[str, str], endpoint: str, args: Any, data: dict[str, str]
) -> list[dict[str, float]]:
    """One warm request of ``endpoint`` served by each project: instructions, PostgreSQL µs.

    ``--jobs`` processes run at once: each count is the same whatever runs beside it.
    """
    runs = [(project, count) for project in projects for count in (args.warmup, args.total)]

    def run(job: tuple[Path, int]) -> tuple[int, int]:
        project, count = job
        return count_instructions(
            project, {**env, "PYTHONPATH": str(project)}, endpoint, count, data
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        counts = list(pool.map(run, runs))
    results = []
    for (short, pg_short), (long, pg_long) in zip(counts[::2], counts[1::2], strict=True):
        results.append(
            {
                "instructions_per_request": round((long - short) / args.requests),
                "postgres_us_per_request": round((pg_long - pg_short) / args.requests / 1e3, 1),
            }
        )
    return results


def measure_cpu(
    projects: list[Path], env: dict[str, str], endpoint: str, args: Any, data: dict[str, str]
) -> list[dict[str, float]]:
    """``--cpu``: the projects serve at once, natively, in batches of ``--batch`` requests
    after the warm-up; a request costs the least CPU time of a batch (noise only adds)."""
    size = args.batch
    batches = max(1, args.requests // size)
    count = args.warmup + batches * size
    warm = args.warmup // size + (args.warmup % size > 0)
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"marks-{i}" for i in range(len(projects))]
        python = str(ROOT / ".venv" / "bin" / "python")
        children = []
        for project, out in zip(projects, outs, strict=True):
            command = [python, __file__, "--child", "serve", endpoint, str(count)]
            command += [data["token"], data["user_id"], str(out), str(size)]
            child_env = {**env, "PYTHONPATH": str(project)}
            log = (Path(tmp) / f"{out.name}.log").open("w")
            children.append(
                subprocess.Popen(command, cwd=project, env=child_env, stderr=log, stdout=log)
            )
        for child, out in zip(children, outs, strict=True):
            if child.wait():
                tail = (Path(tmp) / f"{out.name}.log").read_text()[-2000:]
                raise RuntimeError(f"a {endpoint} child failed:\n{tail}")
        results = []
        for out in outs:
            marks = json.loads(out.read_text())[warm:]
            cpu = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
            pg = (marks[-1][1] - marks[0][1]) / (len(marks) - 1) / size
            results.append(
                {
                    "cpu_us_per_request": round(min(cpu) / size / 1e3, 1),
                    "cpu_us_median": round(sorted(cpu)[len(cpu) // 2] / size / 1e3, 1),
                    "postgres_us_per_request": round(pg / 1e3, 1),
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument(
        "--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS),
        help="what to measure (both, for the ratio)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", type=Path, nargs="+", default=[],
        help="other checkouts to measure in the same run, beside --project",
    )  # fmt: skip
    parser.add_argument("--database", default=DATABASE, help="DROPPED and recreated")
    parser.add_argument("--redis-db", type=int, default=REDIS_DB, help="FLUSHED")
    parser.add_argument("--jobs", type=int, default=1, help="valgrind processes at once")
    parser.add_argument(
        "--cpu", action="store_true",
        help="CPU time per request instead of instructions, all projects at once, natively",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=50, help="requests per batch (--cpu)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "instructions.json"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "setup":
            child_setup()
        else:
            endpoint, count, token, user_id, pg_cpu, *batch = args.child[1:]
            child_serve(endpoint, int(count), token, user_id, pg_cpu, int(batch[0]) if batch else 0)
        return

    args.total = args.warmup + args.requests
    project = args.project.resolve()
    others = [other.resolve() for other in args.compare]
    pg_url = os.environ.get("BENCH_PG_URL", PG)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    env = service_env(pg_url, redis_url, project, args.database, args.redis_db)

    def head(checkout: Path) -> str:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True
        ).stdout.strip()

    commit = head(project)
    print(f"project {project} at {commit}; database {args.database}, Redis db {args.redis_db}")
    for other in others:
        print(f"compared with {other} at {head(other)}")
    data = setup(project, env, args.database)
    results: dict[str, Any] = {}
    compared: dict[str, dict[str, Any]] = {str(other): {} for other in others}
    for endpoint in args.endpoints:
        started = time.monotonic()
        mine, *all_theirs = (measure_cpu if args.cpu else measure)(
            [project, *others], env, endpoint, args, data
        )
        results[endpoint] = mine
        unit = "cpu_us_per_request" if args.cpu else "instructions_per_request"
        print(f"{endpoint:>6}: {mine} ({time.monotonic() - started:.0f} s)", flush=True)
        for other, theirs in zip(others, all_theirs, strict=True):
            compared[str(other)][endpoint] = theirs
            gain = 1 - mine[unit] / theirs[unit]
            theirs["gain_of_project"] = round(gain, 4)
            print(f"{'':>6}  {other.name}: {theirs}; the project saves {gain:.1%}", flush=True)
    ratios = {}
    if "health" in results:
        for endpoint in ("get", "post"):
            if endpoint in results:
                ratios[endpoint] = results[endpoint][unit] / results["health"][unit]
                print(f"{endpoint.upper()} costs {ratios[endpoint]:.2f}x a /health")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "project": str(project),
                "commit": commit,
                "python": platform.python_version(),
                "warmup": args.warmup,
                "requests": args.requests,
                "results": results,
                "compared": {f"{o} at {head(Path(o))}": r for o, r in compared.items()},
                **{f"{e}_over_health": round(r, 3) for e, r in ratios.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
