"""Small helpers for API tests."""

from __future__ import annotations

import uuid
from typing import Any

from eventstore import subscribers, subscriptions
from tests.conftest import settle


def new_user(api: Any, **fields: Any) -> dict[str, Any]:
    body = {
        "email": f"u{uuid.uuid4().hex[:10]}@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        **fields,
    }
    response = api.post("/v1/users", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def project() -> None:
    """Run the users projection in-process (tests without a worker)."""
    settle()
    subscriptions.catch_up(subscribers.get("users"))


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"].startswith("https://")
    return body
