"""Helpers the benchmark scripts share: PostgreSQL parameters and /proc CPU accounting."""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def pg_params(url: str, dbname: str) -> dict[str, Any]:
    """psycopg keyword arguments for database ``dbname`` on the server of ``url``."""
    parts = urlparse(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "password": parts.password or "",
        "dbname": dbname,
    }


def connect(url: str, dbname: str, **kwargs: Any) -> Any:
    """A psycopg connection to ``dbname`` on the server of ``url``."""
    import psycopg

    return psycopg.connect(**pg_params(url, dbname), **kwargs)


def pidfile(service: Path, name: str) -> int | None:
    """The pid a service copy's ``scripts/up.sh`` wrote to ``.data/run/<name>``, if any."""
    with contextlib.suppress(OSError, ValueError):
        return int((service / ".data" / "run" / name).read_text().split()[0])
    return None


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) of this process, or of another local one (None if gone)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited, or PostgreSQL not on this machine
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Seconds of CPU the whole machine has been busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a Celery or gunicorn pool), from /proc."""
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


# --- a copy of the service, for the scripts that run it whole (http_bench, welcome, soak) ---


def copy_checkout(root: Path, target: Path) -> None:
    """Copy the checkout as it is (tracked and untracked files, and .venv) to ``target``.

    The service runs from the copy, so editing the checkout meanwhile cannot change it.
    """
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, files):
        source = root / os.fsdecode(name)
        if source.is_file():
            dest = target / os.fsdecode(name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
    subprocess.run(["cp", "-a", str(root / ".venv"), str(target / ".venv")], check=True)


def run_script(
    service: Path, name: str, env: dict[str, str], log: Path, timeout: float = 900
) -> None:
    """Run ``scripts/<name>`` of the copy, appending its output to ``log`` (a generous
    timeout: on a crowded machine up.sh's start-up takes minutes)."""
    with open(log, "a") as out:
        out.write(f"\n$ scripts/{name}\n")
        out.flush()
        subprocess.run(
            [str(service / "scripts" / name)], cwd=service, env=env, stdout=out,
            stderr=subprocess.STDOUT, check=True, timeout=timeout,
        )  # fmt: skip


def create_token(service: Path, env: dict[str, str]) -> str:
    """A bearer token for user ``bench`` (created if missing) on the copy's database."""
    out = subprocess.run(
        [str(service / ".venv" / "bin" / "python"), "manage.py", "create_api_token", "bench",
         "--create-user"],
        cwd=service, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def save_chart(fig: Any, path: Path) -> None:
    """Write a matplotlib figure (laid out, 110 dpi) to ``path`` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mail_folder(prefix: str) -> Path:
    """A new folder for the emails a benchmark counts (Django's file backend), removed
    when the script exits. In memory (``/dev/shm``) where the machine has it: thousands
    of file creations on the disk share its journal with PostgreSQL's WAL flushes and
    stalled the whole machine now and then, which a real mail transport would not do."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))
    atexit.register(shutil.rmtree, folder, True)
    return folder


# --- measuring in fresh processes, and what else ran meanwhile ---


def admin_sql(url: str, *statements: str) -> list:
    """Run ``statements`` on the server's ``postgres`` database; each one's rows (or None)."""
    out = []
    with connect(url, "postgres", autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            out.append(cur.fetchall() if cur.description else None)
    return out


# --- shared by welcome.py, lag.py and partitions.py ---


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def stats_ms(values: list[float]) -> dict[str, Any]:
    """Count, p50, p90, p99 and max of durations in seconds, as milliseconds."""

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 0.5)),
        "p90_ms": ms(percentile(values, 0.9)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(max(values) if values else None),
    }


def loadavg() -> str:
    """The machine's load averages (1, 5, 15 min) as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def git_commit(root: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()


def recreate_database(url: str, dbname: str) -> None:
    """DROP (with its sessions) and CREATE ``dbname`` on the server of ``url``."""
    with connect(url, "postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {dbname}")


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, its output appended to ``log``."""
    with open(log, "a") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (a warm shutdown for Celery), then SIGKILL of its whole group."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for_text(log: Path, text: str, count: int = 1, timeout: float = 60.0) -> None:
    """Wait until ``text`` appears ``count`` times in ``log`` (a worker saying it is ready)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if log.read_text(errors="replace").count(text) >= count:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{log} did not say {text!r} {count} time(s) within {timeout} s")


def celery_worker_cmd(python: str, queues: str, concurrency: int, pool: str = "prefork",
                      name: str = "worker") -> list[str]:  # fmt: skip
    """A Celery worker of the service (``config``), as scripts/up.sh starts one."""
    return [
        python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
        "--queues", queues, "--pool", pool, "--concurrency", str(concurrency),
        "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def postgres_cpu_seconds(url: str) -> float:
    """CPU seconds of every process of the PostgreSQL server at ``url`` (postmaster,
    backends, background workers), from /proc: the server must run on this machine and
    serve only the benchmark (bench/own_postgres.sh)."""
    with connect(url, "postgres", autocommit=True) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
    return tree_cpu_seconds(int(Path(data_dir, "postmaster.pid").read_text().split()[0]))


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, those that exited and were reaped
    included (the kernel adds them to their parent's cutime and cstime; no double count:
    a process in the tree is alive, so not yet in anyone's cutime)."""
    total = 0.0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def median(values: list[float | None], digits: int = 1) -> float | None:
    """The median of the values that are not None, rounded; None if there are none."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def rss_kb() -> int:
    """Resident memory of this process now, in KiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def activity(url: str, own_databases: tuple[str, ...]) -> dict[str, Any]:
    """What else runs: load average, busy PostgreSQL backends of other databases, pytests."""
    names = ", ".join(f"'{name}'" for name in own_databases)
    busy = admin_sql(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        f"AND datname NOT IN ({names}) AND pid <> pg_backend_pid()",
    )[0][0][0]
    pytest = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            pytest += comm.read_text().strip() in {"pytest", "py.test"}
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "other_active_pg_backends": busy,
        "pytest_processes": pytest,
    }


def versions(url: str, root: Path) -> dict[str, Any]:
    """The machine, the libraries and the PostgreSQL settings a result was measured with."""
    from importlib.metadata import PackageNotFoundError, version

    settings = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
    rows = admin_sql(url, *(f"SHOW {name}" for name in settings))
    libraries = {}
    for name in ("django", "psycopg", "eventsourcing"):
        with contextlib.suppress(PackageNotFoundError):
            libraries[name] = version(name)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **libraries,
        **{f"pg_{name}": row[0][0] for name, row in zip(settings, rows, strict=True)},
        "git_commit": commit,
    }


def _call_in_child(function: Any, args: tuple, queue: Any) -> None:
    try:
        queue.put(function(*args))
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def in_fresh_process(function: Any, *args: Any, timeout: float = 1800.0) -> Any:
    """``function(*args)`` in a new spawned process (its own memory, its own Django), which
    must return something picklable; its traceback raised here if it failed."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call_in_child, args=(function, args, queue), daemon=True)
    proc.start()
    result = queue.get(timeout=timeout)
    proc.join(timeout=60)
    if isinstance(result, dict) and "error" in result:
        raise RuntimeError(f"{function.__name__} failed:\n{result['error']}")
    return result


def service_slot(port: int, redis_db: int) -> tuple[int, int]:
    """The port and Redis database a whole-service bench uses: its defaults, unless
    ``BENCH_PORT`` / ``BENCH_REDIS_DB`` say otherwise (two copies on one machine)."""
    return int(os.environ.get("BENCH_PORT", port)), int(os.environ.get("BENCH_REDIS_DB", redis_db))


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a result as indented JSON, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
