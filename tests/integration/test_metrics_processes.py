"""/metrics adds up every process: two gunicorn workers and a Celery worker, each writing
its own multiprocess files, as scripts/up.sh runs them."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.metrics import scrape_url, served_with_metrics, value
from tests.processes import celery_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-processes-token-0123456789"


@pytest.mark.slow
def test_two_gunicorn_workers_and_a_celery_worker_add_up(tmp_path, api) -> None:
    server, env = served_with_metrics(tmp_path, TOKEN)
    directory = tmp_path / "metrics"
    sent = 0
    try:
        workers = server.worker_pids()
        assert len(workers) == 2

        def counted_by(pid: int) -> bool:
            return (directory / f"counter_{pid}.db").exists()

        def burst() -> bool:
            nonlocal sent
            with ThreadPoolExecutor(8) as pool:
                replies = list(
                    pool.map(lambda n: requests.get(f"{server.url}/nowhere/{n}"), range(16))
                )
            assert [reply.status_code for reply in replies] == [404] * 16
            sent += 16
            return all(counted_by(pid) for pid in workers)

        wait_for(burst, 60, "requests to reach both gunicorn workers")
        # (Not /health: the test's server helper probes it, and a probe it gave up on may
        # still be answered later.)
        unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
        assert value(scrape_url(server.url, TOKEN), "http_requests_total", **unmatched) == sent

        # A worker that exits leaves its counts: the sum stays, and a new worker adds to it.
        os.kill(workers[0], signal.SIGTERM)
        wait_for(lambda: workers[0] not in server.worker_pids() and len(server.worker_pids()) == 2,
                 30, "gunicorn to replace the worker")  # fmt: skip
        for n in range(4):
            assert requests.get(f"{server.url}/nowhere/again{n}").status_code == 404
        samples = scrape_url(server.url, TOKEN)
        assert value(samples, "http_requests_total", **unmatched) == sent + 4

        # A Celery worker process (prefork) counts into the same directory: one signup's
        # welcome email, sent by the worker, shows in the web process's /metrics.
        worker = celery_worker(env, tmp_path / "celery.log", concurrency=1)
        try:
            body = {"email": "metrics@example.com", "first_name": "Met", "last_name": "Rics"}
            headers = {"Authorization": f"Bearer {api.token}"}
            created = requests.post(
                f"{server.url}/v1/users", json=body, headers=headers, timeout=10
            )
            assert created.status_code == 201, created.text

            def emailed() -> bool:
                return value(scrape_url(server.url, TOKEN), "saga_emails_sent_total") == 1

            wait_for(emailed, 60, "the worker's email to show in /metrics")
            samples = scrape_url(server.url, TOKEN)
            step = {"task": "sagas.tasks.run_saga_step", "outcome": "success"}
            assert value(samples, "celery_tasks_total", **step) >= 1
            appended = {"category": "user", "event_type": "UserCreated"}
            assert value(samples, "eventstore_events_appended_total", **appended) == 1
            welcomed = {"category": "user", "event_type": "UserWelcomed"}
            assert value(samples, "eventstore_events_appended_total", **welcomed) == 1
            assert value(samples, "saga_instances", saga="welcome", status="completed") == 1
        finally:
            worker.stop()
    finally:
        server.stop()
