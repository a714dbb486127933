"""Request and correlation ids over HTTP, and the JSON log line of each request."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from config import logs
from eventstore.models import Event
from tests.e2e.helpers import assert_problem, new_user, project

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every record of this process, rendered as LOG_FORMAT=json renders it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class TestRequestId:
    def test_a_sane_request_id_is_echoed(self, api) -> None:
        response = api.get("/v1/users", HTTP_X_REQUEST_ID="client-42.a_b")
        assert response["X-Request-ID"] == "client-42.a_b"

    @pytest.mark.parametrize("sent", [None, "", "x" * 129, "has space", "new\nline", "ünï"])
    def test_otherwise_a_new_one(self, api, sent) -> None:
        headers = {} if sent is None else {"HTTP_X_REQUEST_ID": sent}
        response = api.get("/v1/users", **headers)
        assert uuid.UUID(response["X-Request-ID"]).version == 4

    def test_even_a_guard_answer_carries_it(self, api) -> None:
        response = api.get("/v1/users?q=%00", HTTP_X_REQUEST_ID="guarded")
        assert response.status_code == 400
        assert response["X-Request-ID"] == "guarded"


class TestCorrelationId:
    def test_the_clients_id_lands_in_the_events_and_is_echoed(self, api) -> None:
        correlation = str(uuid.uuid4())
        response = api.post(
            "/v1/users",
            {"email": "c@example.com", "first_name": "C", "last_name": "D"},
            format="json",
            HTTP_X_CORRELATION_ID=correlation,
        )
        assert response.status_code == 201
        assert response["X-Correlation-ID"] == correlation
        event = Event.objects.get(position=response.json()["position"])
        assert event.metadata["correlation_id"] == correlation
        assert event.metadata["causation_id"] == event.metadata["command_id"]

    def test_without_one_a_new_id_is_used_and_echoed(self, api) -> None:
        response = api.post(
            "/v1/users",
            {"email": "e@example.com", "first_name": "E", "last_name": "F"},
            format="json",
        )
        echoed = response["X-Correlation-ID"]
        assert uuid.UUID(echoed)
        event = Event.objects.get(position=response.json()["position"])
        assert event.metadata["correlation_id"] == echoed

    def test_one_that_is_no_uuid_is_refused(self, api) -> None:
        response = api.post(
            "/v1/users",
            {"email": "g@example.com", "first_name": "G", "last_name": "H"},
            format="json",
            HTTP_X_CORRELATION_ID="not-a-uuid",
        )
        assert "must be a UUID" in assert_problem(response, 400)["detail"]
        assert "X-Correlation-ID" not in response
        assert not Event.objects.exists()


def test_one_json_line_per_request_with_its_ids(api, json_logs) -> None:
    correlation = str(uuid.uuid4())
    user = new_user(api)
    project()
    json_logs.truncate(0)
    json_logs.seek(0)
    response = api.get(
        f"/v1/users/{user['id']}", HTTP_X_REQUEST_ID="req-1", HTTP_X_CORRELATION_ID=correlation
    )
    assert response.status_code == 200
    requests = [line for line in lines(json_logs) if line["logger"] == "config.requests"]
    assert len(requests) == 1
    line = requests[0]
    assert line["message"] == "request"
    assert line["level"] == "info"
    assert line["timestamp"]
    assert (line["method"], line["route"], line["status"]) == (
        "GET", "/v1/users/<str:user_id>", 200,
    )  # fmt: skip
    assert (line["request_id"], line["correlation_id"]) == ("req-1", correlation)
    assert line["user_id"] == user["id"]
    assert line["actor"].startswith("user:")
    assert isinstance(line["duration_ms"], float)
