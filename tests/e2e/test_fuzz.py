"""Schemathesis against the service's own OpenAPI schema, through the real WSGI app.

Every operation gets generated requests (valid and invalid) with a bearer token: an API
client's for the users endpoints, a staff member's for the event feed and streams. Each
response must not be a 5xx and must match the schema (status code, content type,
headers, body). A stateful run follows the links create -> get / update / delete /
events. Bounded here (a few hundred requests); the long run is ``scripts/fuzz.sh``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from config.wsgi import application
from eventstore.models import Event
from tests.conftest import grant

pytestmark = pytest.mark.django_db(transaction=True)

# Enough to exercise every parameter with valid and invalid values, small enough for CI.
EXAMPLES_PER_OPERATION = 40
STATEFUL_EXAMPLES = 15
STATEFUL_STEPS = 8
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
]
STAFF_PATHS = r"^/v1/(events|streams/)"

_USER_ID = "$response.body#/id"
# OpenAPI links: what a created user's id (from the 201 body) can be used for next.
LINKS = {
    "GetUser": {"operationId": "users_retrieve", "parameters": {"user_id": _USER_ID}},
    "ReplaceUser": {"operationId": "users_replace", "parameters": {"user_id": _USER_ID}},
    "ChangeUser": {"operationId": "users_partial_update", "parameters": {"user_id": _USER_ID}},
    "DeleteUser": {"operationId": "users_destroy", "parameters": {"user_id": _USER_ID}},
    "UserEvents": {"operationId": "users_events", "parameters": {"user_id": _USER_ID}},
    "UserStream": {
        "operationId": "streams_retrieve",
        "parameters": {"stream_id": "user-{$response.body#/id}"},
    },
}


def raw_schema() -> dict[str, Any]:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    return response.json()


def with_links(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema plus links from each write's 200/201 to the operations on that user."""
    schema = copy.deepcopy(schema)
    for path, method, status in [
        ("/v1/users", "post", "201"),
        ("/v1/users/{user_id}", "put", "200"),
        ("/v1/users/{user_id}", "patch", "200"),
    ]:
        schema["paths"][path][method]["responses"][status]["links"] = LINKS
    return schema


def events_fingerprint() -> tuple[int, int]:
    return Event.objects.count(), max(Event.objects.values_list("position", flat=True), default=0)


# Fixed tokens, so the schema and its auth can be set up when pytest collects this module;
# the fixture stores their hashes (as create_api_token would) in each test's database.
CLIENT_TOKEN = "fuzz-client-token-0123456789abcdefghijklmnopqrstuvwxyz"
STAFF_TOKEN = "fuzz-staff-token-0123456789abcdefghijklmnopqrstuvwxyz"

CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "generation": {
            "max-examples": EXAMPLES_PER_OPERATION,
            "database": "none",
            # Credentials are the tokens of BearerTokens below, never generated ones.
            "with-security-parameters": False,
        },
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
    }
)
schema = schemathesis.openapi.from_dict(with_links(raw_schema()), config=CONFIG)
schema.app = application


@schema.auth(refresh_interval=None)
class BearerTokens:
    """The staff token for the event feed and streams, the API client's for the rest."""

    def get(self, case: Any, context: Any) -> str:
        return STAFF_TOKEN if re.match(STAFF_PATHS, case.operation.path) else CLIENT_TOKEN

    def set(self, case: Any, token: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def fuzzing_setup(transactional_db, settings, monkeypatch) -> None:
    from django.contrib.auth import get_user_model

    from users.authentication import hash_token
    from users.models import ApiToken

    users = get_user_model().objects
    for username, token, is_staff in [
        ("fuzz", CLIENT_TOKEN, False),
        ("fuzz-staff", STAFF_TOKEN, True),
    ]:
        user = users.create_user(username=username, password="fuzz-pass-123", is_staff=is_staff)
        if is_staff:
            user = grant(user, "eventstore.view_event")
        ApiToken.objects.create(
            user=user, name="fuzz", key_hash=hash_token(token), prefix=token[:8]
        )
    # Generated requests come fast, anonymous ones (the ignored_auth check) too.
    rates = {"anon": "1000000/minute", "user": "1000000/minute"}
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", rates)
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", rates)
    # wait_for with a position nobody wrote waits out the timeout; keep that short here.
    settings.READ_YOUR_WRITES_TIMEOUT_SECONDS = 0.05


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
@pytest.mark.slow
def test_every_operation_conforms_and_never_fails(case) -> None:
    case.call_and_validate()


@pytest.mark.slow
def test_stateful_links_create_then_use_the_user() -> None:
    before = events_fingerprint()
    workflow = schema.as_state_machine()
    workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    assert events_fingerprint() != before  # the links were followed: users were written


def test_the_schema_documents_the_problem_media_type() -> None:
    schema = raw_schema()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
