"""gunicorn settings file (scripts/up.sh passes it with --config): server hooks only; the
command line sets everything else."""

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges leave the multiprocess metrics (config/metrics.py)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
