"""CPU, SQL statements and Redis commands per welcome in one process: the welcome saga's
subscriber batch and its steps, end to end against a local SMTP relay that answers at once.

Run (from the project root, about a minute)::

    .venv/bin/python bench/saga_cpu.py              # 200 users
    .venv/bin/python bench/saga_cpu.py --profile    # and the top of a cProfile of each part

No Celery worker, gunicorn or relay delay is involved: the process creates ``--users``
users through the command handler, runs the ``welcome-saga`` subscriber's catch-up (which
opens the instances and queues their step tasks on the broker), then runs each instance's
task body (:func:`sagas.tasks.run_saga_step`) in turn, as a worker thread would. SQL
statements and Redis commands are counted: the same code gives the same counts, whatever
else the machine does. The process CPU time (user + system) of each part is shown beside
the CPU time of creating the users (the reference of the same run), since the machine is
shared and its speed drifts.

It uses PostgreSQL at ``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432``),
where it DROPS and recreates the database ``bench_saga_cpu``, and Redis database 14 of
``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379``), which it FLUSHES.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
DB = "bench_saga_cpu"
REDIS_DB = 14

RELAY = """
import sys, time
from tests.smtp import SmtpRelay
relay = SmtpRelay(0.0)
relay.start()
print(relay.port, flush=True)
sys.stdin.read()
print(len(relay.received), flush=True)
"""


class Counts:
    """SQL statements and Redis commands issued by this process."""

    def __init__(self) -> None:
        self.sql = 0
        self.redis = 0

        self.log: list[str] | None = None

    def sql_wrapper(self, execute: Callable, sql: str, params: Any, many: bool, context: Any):
        self.sql += 1
        if self.log is not None:
            self.log.append(sql[:150])
        return execute(sql, params, many, context)


def _count_redis(counts: Counts) -> None:
    """Count round trips: a command, or a whole pipeline, goes out in one call."""
    from redis.connection import AbstractConnection

    send = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        counts.redis += 1
        return send(self, command, check_health)

    AbstractConnection.send_packed_command = counted


@contextmanager
def measured(name: str, counts: Counts, per: int, profile: bool, out: dict[str, Any]):
    from django.db import connection

    sql0, redis0 = counts.sql, counts.redis
    profiler = cProfile.Profile(time.process_time) if profile else None
    start = time.process_time()
    with connection.execute_wrapper(counts.sql_wrapper):
        if profiler:
            profiler.enable()
        yield
        if profiler:
            profiler.disable()
    cpu = time.process_time() - start
    out[name] = {
        "cpu_ms": 1000 * cpu / per,
        "sql": (counts.sql - sql0) / per,
        "redis": (counts.redis - redis0) / per,
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        print(f"--- {name} ---\n{text.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sql", action="store_true", help="list the SQL of one welcome")
    args = parser.parse_args()

    subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = relay.stdout.readline().strip()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"{PG_URL}/{DB}",
        REDIS_URL=f"{REDIS_BASE}/{REDIS_DB}",
        DEBUG="false",
        WELCOME_DELAY_SECONDS="0",
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        EMAIL_TIMEOUT="5",
    )
    os.environ.setdefault("PERSONAL_DATA_MASTER_KEYS", base64.b64encode(os.urandom(32)).decode())
    os.environ.setdefault("PERSONAL_DATA_HMAC_KEY", base64.b64encode(os.urandom(32)).decode())
    import django

    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db.models import Max

    from config.cache import redis_client
    from eventstore import reads, subscribers, subscriptions
    from eventstore.models import Event
    from sagas import tasks
    from sagas.models import SagaInstance
    from users import handlers
    from users.commands import CreateUser

    call_command("migrate", verbosity=0)
    redis_client(cache).flushdb()
    counts = Counts()
    _count_redis(counts)
    saga = subscribers.get("welcome-saga")
    results: dict[str, Any] = {}

    def create(n: int) -> None:
        for _ in range(n):
            handlers.handle(
                CreateUser(
                    email=f"s{uuid.uuid4().hex[:10]}@example.com", first_name="Sa", last_name="Ga"
                )
            )

    def settle() -> None:
        """Wait until every event is below the horizon (a transaction open anywhere on the
        server holds it back), so one catch-up takes them all."""
        newest = Event.objects.aggregate(newest=Max("transaction_id"))["newest"]
        while reads.horizon().transaction_id <= int(newest):
            time.sleep(0.01)

    def open_and_run(label: str, n: int) -> None:
        with measured(f"{label}create (reference)", counts, n, False, results):
            create(n)
        settle()
        with measured(f"{label}saga subscriber batch", counts, n, args.profile, results):
            subscriptions.catch_up(saga)
        pending = list(
            SagaInstance.objects.filter(status__in=SagaInstance.OPEN).values_list("pk", flat=True)
        )
        assert len(pending) == n, (len(pending), n)
        with measured(f"{label}saga steps (task body)", counts, n, args.profile, results):
            for pk in pending:
                tasks.run_saga_step(pk)

    open_and_run("warm-up: ", 20)
    if args.sql:
        counts.log = []
        open_and_run("one: ", 1)
        print("\n".join(counts.log))
        counts.log = None
    open_and_run("", args.users)
    left = SagaInstance.objects.exclude(status=SagaInstance.Status.COMPLETED).count()
    relay.stdin.close()
    received = int(relay.stdout.readline())
    relay.wait()
    print(f"users {args.users}; instances not completed: {left}; emails received: {received}")
    print(f"{'per welcome':38} {'CPU ms':>8} {'SQL':>6} {'Redis':>6}")
    for name, row in results.items():
        if not name.startswith("warm-up"):
            print(f"{name:38} {row['cpu_ms']:8.2f} {row['sql']:6.1f} {row['redis']:6.1f}")
    redis_client(cache).flushdb()


if __name__ == "__main__":
    main()
