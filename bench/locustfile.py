"""Locust load for the users API: many clients creating, changing, reading and deleting.

Each simulated client works on the users it created: it creates (with an
``Idempotency-Key``, retried with the same key after a 5xx or a dropped connection),
changes names, reads one user, the list and a stream, and sometimes deletes. Every write
the API acknowledges (stream, version, position) is appended to ``SOAK_ACKS`` (JSON
lines), so that ``tests.consistency`` can prove afterwards that none was lost.

Environment: ``SOAK_TOKEN`` (a bearer token, required), ``SOAK_ACKS`` (a file; default
``soak-acks.jsonl``), ``SOAK_WAIT`` (the longest pause between a client's requests;
0.1 s). Normally started by ``bench/soak.py``; by hand, against a running
``scripts/up.sh`` (with ``THROTTLE_USER_RATE`` raised)::

    SOAK_TOKEN=... .venv/bin/locust -f bench/locustfile.py --headless \\
        -H http://127.0.0.1:8000 -u 32 -r 8 -t 60s
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

from locust import HttpUser, between, events, task

ACKS_PATH = os.environ.get("SOAK_ACKS", "soak-acks.jsonl")
_acks: list[dict[str, Any]] = []
RETRIES = 20


def _ack(stream_id: str, version: int, position: int | None) -> None:
    if position is not None:
        _acks.append({"stream_id": stream_id, "version": version, "position": position})


@events.test_stop.add_listener
def _write_acks(**_: Any) -> None:
    with open(ACKS_PATH, "w") as out:
        for ack in _acks:
            out.write(json.dumps(ack) + "\n")


class ApiClient(HttpUser):
    """One API client with its own users."""

    # SOAK_WAIT: the longest pause (seconds) between a client's requests.
    wait_time = between(0, float(os.environ.get("SOAK_WAIT", "0.1")))

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['SOAK_TOKEN']}"
        self.mine: list[str] = []
        self.created()

    def _send(self, method: str, url: str, name: str, **kwargs: Any) -> Any:
        """Send; after a 5xx or a lost connection send the same request again."""
        for _ in range(RETRIES):
            with self.client.request(
                method, url, name=name, catch_response=True, **kwargs
            ) as response:
                if response.status_code == 0 or response.status_code >= 500:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    continue
                if response.status_code >= 400 and response.status_code not in (404, 409):
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                else:
                    response.success()
                return response
        return None

    @task(3)
    def created(self) -> None:
        key = str(uuid.uuid4())
        body = {"email": f"{key}@example.com", "first_name": "Soak", "last_name": "Test"}
        response = self._send(
            "POST", "/v1/users", "POST /v1/users", json=body, headers={"Idempotency-Key": key}
        )
        if response is not None and response.status_code == 201:
            data = response.json()
            self.mine.append(data["id"])
            _ack(f"user-{data['id']}", data["version"], data["position"])

    @task(4)
    def changed(self) -> None:
        if not self.mine:
            return
        user_id = random.choice(self.mine)
        body = {"first_name": f"N{random.randrange(10**6)}"}
        response = self._send("PATCH", f"/v1/users/{user_id}", "PATCH /v1/users/{id}", json=body)
        if response is not None and response.status_code == 200:
            data = response.json()
            _ack(f"user-{user_id}", data["version"], data["position"])

    @task(6)
    def read_one(self) -> None:
        if self.mine:  # the read model may lag a moment: 404 is fine
            self._send("GET", f"/v1/users/{random.choice(self.mine)}", "GET /v1/users/{id}")

    @task(2)
    def read_list(self) -> None:
        self._send("GET", "/v1/users?limit=20", "GET /v1/users")

    @task(1)
    def read_stream(self) -> None:
        if self.mine:
            user_id = random.choice(self.mine)
            self._send("GET", f"/v1/users/{user_id}/events", "GET /v1/users/{id}/events")

    @task(1)
    def deleted(self) -> None:
        if len(self.mine) < 3:
            return
        user_id = self.mine.pop(random.randrange(len(self.mine)))
        response = self._send("DELETE", f"/v1/users/{user_id}", "DELETE /v1/users/{id}")
        if response is not None and response.status_code == 204:
            version = int(response.headers["ETag"].strip('"'))
            _ack(f"user-{user_id}", version, int(response.headers["Position"]))
