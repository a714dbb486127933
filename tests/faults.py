"""Tools for fault tests: a private PostgreSQL, gunicorn, an HTTP load that records what the
API acknowledged, an email backend that names the process that sent, and an in-process
driver for subscribers and sagas. Processes come from :mod:`tests.processes`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from django.core.mail.backends.filebased import EmailBackend as FileBackend

from tests.consistency import Ack
from tests.processes import ROOT, Child, free_port, wait_for

# FAULTS_SCALE=10 runs every fault test ten times longer and harder (see docs/reliability.md).
SCALE = max(1, int(os.environ.get("FAULTS_SCALE", "1")))


def scaled(value: int) -> int:
    return value * SCALE


_started = time.monotonic()


def phase(what: str) -> None:
    """Log a step of a fault test with the time since the run began (shown with -s)."""
    print(f"[{time.monotonic() - _started:7.2f}s] {what}", flush=True)


# --- a PostgreSQL server the test owns ---------------------------------------------------


def postgres_bin() -> Path | None:
    """The directory of pg_ctl and initdb: PG_BIN, else the newest Debian install, else PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    installed = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(installed, key=lambda d: Path(d).parent.name.zfill(4), reverse=True)
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else "")
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, which the test may crash and restart.

    PostgreSQL refuses to run as root; as root, the cluster belongs to ``postgres`` and the
    commands run through ``runuser``. Its directory is outside pytest's tmp_path, which
    only root can enter. To investigate a failure: ``FAULTS_PG_LOG=/tmp/pg.log`` logs every
    statement with its process and transaction id and keeps the log there;
    ``FAULTS_KEEP_PG=1`` leaves the server running (its URL is printed).
    """

    def __init__(self, owner: str = "postgres") -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries (set PG_BIN)")
        self.bin = bin_dir
        self.port = free_port()
        self.owner = owner if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.dir / "data"
        if self.owner:
            shutil.chown(self.dir, user=self.owner)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/faults"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=check, timeout=120, cwd=self.dir
        )

    def create(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.start()
        with psycopg.connect(self.url.replace("/faults", "/postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=60 -c shared_buffers=16MB"
        )
        if os.environ.get("FAULTS_PG_LOG"):  # every statement, with its process and xid
            options += " -c log_statement=all -c log_line_prefix='%m [%p] x%x '"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                  "-o", options, "start")  # fmt: skip

    def snapshot(self) -> str:
        """The server's current snapshot (xmin:xmax:running), for logs of a test."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return str(conn.execute("SELECT pg_current_snapshot()").fetchone()[0])

    def crash(self) -> None:
        """Stop at once, as if the server died: no shutdown checkpoint; the next start runs
        crash recovery (the operating system's cache survives: not a power cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        if os.environ.get("FAULTS_KEEP_PG"):
            print(f"kept {self.url} in {self.dir}", flush=True)
            return
        if os.environ.get("FAULTS_PG_LOG"):
            shutil.copy(self.dir / "log", os.environ["FAULTS_PG_LOG"])
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- service processes ---------------------------------------------------------------------


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run ``manage.py`` with ``env``; its stdout, or an AssertionError with its stderr."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


def api_token(env: dict[str, str], username: str) -> str:
    return manage(env, "create_api_token", username, "--create-user").strip().splitlines()[-1]


class Gunicorn(Child):
    """The WSGI app served as in production (sync workers), on a free port."""

    def __init__(
        self, env: dict[str, str], log: Path, workers: int = 2, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        super().__init__(
            [
                sys.executable, "-m", "gunicorn", "config.wsgi:application",
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                "--worker-class", "sync", "--timeout", "60", "--graceful-timeout", "5",
                "--no-control-socket", "--access-logfile", "-", *extra,
            ],
            env,
            log,
        )  # fmt: skip
        try:
            wait_for(self._healthy, 60, f"gunicorn on port {self.port}")
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"gunicorn exited:\n{self.output()[-3000:]}")
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


class ProcessFileBackend(FileBackend):
    """Django's file backend, each file named after the process group that sent it.

    Fault tests SIGKILL worker process groups; this tells which copies of an email a
    killed worker sent before its transaction could commit.
    """

    def _get_filename(self) -> str:
        if self._fname is None:
            name = f"{os.getpgrp()}-{time.time_ns()}-{abs(id(self))}.log"
            self._fname = os.path.join(self.file_path, name)
        return self._fname


# --- an HTTP load that records acknowledged writes ------------------------------------------


@dataclass
class LoadResult:
    """What the clients saw: each acknowledged write, status counts, anything unexpected."""

    acks: list[Ack] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    unexpected: list[str] = field(default_factory=list)
    requests: int = 0
    idempotent_replays: int = 0
    created: dict[str, str] = field(default_factory=dict)  # idempotency key -> user id

    def add(self, other: LoadResult) -> None:
        self.acks += other.acks
        self.statuses.update(other.statuses)
        self.connection_errors += other.connection_errors
        self.unexpected += other.unexpected
        self.requests += other.requests
        self.idempotent_replays += other.idempotent_replays
        self.created.update(other.created)


class ApiLoad:
    """Clients that create, change, read and delete users over HTTP until stopped.

    A 503 (database unavailable) is retried with the same request, creates with the same
    ``Idempotency-Key``: after a failure whose outcome the client cannot know, the retry
    is how it learns it, and it must not create a second user. ``expected`` lists the
    statuses that are fine besides 2xx; anything else is recorded as unexpected.
    """

    def __init__(
        self, base_url: str, token: str, clients: int, *, expected: tuple[int, ...] = (503,)
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.clients = clients
        self.expected = expected
        self.stop = threading.Event()
        self.results = [LoadResult() for _ in range(clients)]
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> ApiLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def result(self) -> LoadResult:
        total = LoadResult()
        for result in self.results:
            total.add(result)
        return total

    def _request(
        self, session: requests.Session, result: LoadResult, method: str, path: str, **kwargs: Any
    ) -> requests.Response | None:
        """Send until the answer is not a 503 (or the load is long stopped)."""
        give_up = None
        while True:
            result.requests += 1
            try:
                response = session.request(method, self.base_url + path, timeout=30, **kwargs)
            except requests.ConnectionError:
                result.connection_errors += 1
                response = None
            else:
                result.statuses[response.status_code] += 1
                if response.status_code >= 400:
                    if response.headers.get("Content-Type") != "application/problem+json":
                        result.unexpected.append(f"{method} {path}: not problem JSON")
                    if response.status_code not in self.expected:
                        result.unexpected.append(
                            f"{method} {path}: {response.status_code} {response.text[:300]}"
                        )
                if response.status_code != 503:
                    return response
            if self.stop.is_set():
                give_up = give_up or time.monotonic() + 60
                if time.monotonic() > give_up:
                    return None
            time.sleep(0.05)

    def _client(self, index: int) -> None:
        result = self.results[index]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        rng = random.Random(index)
        mine: list[str] = []
        while not self.stop.is_set():
            key = str(uuid.uuid4())
            body = {"email": f"{key}@example.com", "first_name": "Load", "last_name": f"C{index}"}
            response = self._request(
                session, result, "POST", "/v1/users", json=body, headers={"Idempotency-Key": key}
            )
            if response is None:
                break
            if response.status_code == 201:
                data = response.json()
                result.created[key] = data["id"]
                result.idempotent_replays += response.headers.get("Idempotent-Replayed") == "true"
                result.acks.append(Ack(f"user-{data['id']}", data["version"], data["position"]))
                mine.append(data["id"])
            if mine and rng.random() < 0.6:
                user_id = rng.choice(mine)
                name = f"N{rng.randrange(10**6)}"
                response = self._request(
                    session, result, "PATCH", f"/v1/users/{user_id}", json={"first_name": name}
                )
                if response is not None and response.status_code == 200:
                    data = response.json()
                    if data["position"] is not None:
                        result.acks.append(
                            Ack(f"user-{user_id}", data["version"], data["position"])
                        )
            if mine and rng.random() < 0.3:  # reads that need no worker: stream and list
                self._request(session, result, "GET", f"/v1/users/{rng.choice(mine)}/events")
                self._request(session, result, "GET", "/v1/users", params={"limit": 10})
            if mine and rng.random() < 0.15:
                user_id = mine.pop(rng.randrange(len(mine)))
                response = self._request(session, result, "DELETE", f"/v1/users/{user_id}")
                if response is not None and response.status_code == 204:
                    version = int(response.headers["ETag"].strip('"'))
                    result.acks.append(
                        Ack(f"user-{user_id}", version, int(response.headers["Position"]))
                    )


# --- subscribers and sagas in this process (tests without a worker) -------------------------


def drive_in_process(timeout: float = 60) -> None:
    """Run the subscribers and every due saga step here until the run is quiet."""
    from eventstore import subscriptions
    from sagas import runner
    from sagas.models import SagaInstance
    from tests.conftest import settle
    from tests.consistency import quiet

    deadline = time.monotonic() + timeout
    while True:
        settle()
        subscriptions.catch_up_all()
        for instance_id in SagaInstance.objects.filter(
            status__in=["started", "waiting"]
        ).values_list("pk", flat=True):
            runner.run(instance_id)
        subscriptions.catch_up_all()
        if quiet():
            return
        if time.monotonic() > deadline:
            raise AssertionError("subscribers and sagas did not go quiet")


def consistency_in_child(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run the consistency check in a child process (for a database this process cannot use)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.consistency", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(done.stdout)
    raise AssertionError(f"consistency check failed to run: {done.stdout[-2000:]}{done.stderr}")


def write_acks(path: Path, acks: list[Ack]) -> None:
    with path.open("w") as out:
        for ack in acks:
            out.write(json.dumps(ack.__dict__) + "\n")
