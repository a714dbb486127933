"""A real Prometheus (Debian's package; scripts/test.sh installs it) scrapes the running
service with the bearer token, and its own HTTP API answers with the subscriber lag."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
import requests

from eventstore import subscribers, subscriptions
from tests.conftest import settle
from tests.metrics import served_with_metrics
from tests.processes import Child, free_port, wait_for
from users import handlers
from users.commands import CreateUser

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

TOKEN = "prometheus-scrape-token-0123456789"

CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: users-service
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {token}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def create_user() -> None:
    handlers.handle(
        CreateUser(email=f"p{uuid.uuid4().hex[:8]}@example.com", first_name="Pro", last_name="M")
    )


@pytest.mark.slow
def test_prometheus_scrapes_the_subscriber_lag(tmp_path) -> None:
    create_user()
    settle()
    subscriptions.catch_up(subscribers.get("users"))  # caught up; no worker runs from here
    for _ in range(3):
        create_user()
    settle()

    server, _ = served_with_metrics(tmp_path, TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(token=TOKEN, port=server.port))
    port = free_port()
    prometheus = Child(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": "/usr/bin:/bin"},
        tmp_path / "prometheus.log",
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expression: str) -> list[dict[str, Any]]:
        if not prometheus.alive():
            raise AssertionError(f"prometheus exited:\n{prometheus.output()[-3000:]}")
        try:
            reply = requests.get(api, params={"query": expression}, timeout=2)
        except requests.RequestException:
            return []
        if reply.status_code != 200:
            return []
        return reply.json()["data"]["result"]

    def lag_is(expected: float) -> bool:
        found = query('eventstore_subscriber_lag_events{subscriber="users",partition="0"}')
        return bool(found) and float(found[0]["value"][1]) == expected

    try:
        wait_for(lambda: lag_is(3), 60, "Prometheus to scrape a lag of 3 events")
        up = query('up{job="users-service"}')
        assert [float(series["value"][1]) for series in up] == [1.0]
        age = query('eventstore_subscriber_lag_seconds{subscriber="users"}')
        assert float(age[0]["value"][1]) > 0
        # The subscriber catches up: the next scrapes say so.
        subscriptions.catch_up(subscribers.get("users"))
        wait_for(lambda: lag_is(0), 60, "Prometheus to scrape a lag of 0")
    finally:
        prometheus.stop()
        server.stop()
