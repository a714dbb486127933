"""Who may call what, throttling, token issuing, and the self-documenting API."""

from __future__ import annotations

import json
import re
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from tests.e2e.helpers import assert_problem
from users.authentication import hash_token
from users.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)

USER_ID = str(uuid.uuid4())
ENDPOINTS = [
    ("get", "/v1/users"),
    ("post", "/v1/users"),
    ("get", f"/v1/users/{USER_ID}"),
    ("put", f"/v1/users/{USER_ID}"),
    ("patch", f"/v1/users/{USER_ID}"),
    ("delete", f"/v1/users/{USER_ID}"),
    ("get", f"/v1/users/{USER_ID}/events"),
    ("get", "/v1/events"),
    ("get", f"/v1/streams/user-{USER_ID}"),
]
STAFF_ONLY = {"/v1/events", f"/v1/streams/user-{USER_ID}"}


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_anonymous_is_401_everywhere(method, url) -> None:
    response = getattr(APIClient(), method)(url, {}, format="json")
    assert_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_bad_token_is_401(method, url, transactional_db) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    assert_problem(getattr(client, method)(url, {}, format="json"), 401)


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_clients_reach_users_but_not_the_feed(method, url, api) -> None:
    status = getattr(api, method)(url, {}, format="json").status_code
    if url in STAFF_ONLY:
        assert status == 403
    else:
        assert status not in (401, 403)


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_staff_with_the_event_permission_reach_everything(method, url, event_viewer) -> None:
    assert getattr(event_viewer, method)(url, {}, format="json").status_code not in (401, 403)


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_staff_without_the_event_permission_do_not_read_events(method, url, staff) -> None:
    """The admin asks for eventstore.view_event before it shows an event; so does the API."""
    response = getattr(staff, method)(url, {}, format="json")
    if url in STAFF_ONLY:
        assert "view_event" in assert_problem(response, 403)["detail"]
    else:
        assert response.status_code not in (401, 403)


def test_inactive_users_token_stops_working(api, client_user) -> None:
    assert api.get("/v1/users").status_code == 200
    client_user.is_active = False
    client_user.save()
    assert_problem(api.get("/v1/users"), 401)


def test_session_writes_need_csrf(staff) -> None:
    strict = APIClient(enforce_csrf_checks=True)
    strict.force_login(staff.user)
    body = {"email": "s@example.com", "first_name": "S", "last_name": "T"}
    assert_problem(strict.post("/v1/users", body, format="json"), 403)


def test_create_api_token_prints_it_once_and_stores_a_hash(client_user) -> None:
    out = StringIO()
    call_command("create_api_token", "client", "--name", "ci", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token)
    stored = ApiToken.objects.get(name="ci")
    assert stored.key_hash == hash_token(token)
    assert token not in {stored.key_hash, stored.prefix, stored.name}
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/v1/users").status_code == 200


def test_create_api_token_errors(transactional_db) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("create_api_token", "ghost")
    out = StringIO()
    call_command("create_api_token", "ghost", "--create-user", stdout=out)
    assert "created user 'ghost'" in out.getvalue()


def test_throttling_answers_429_with_retry_after(api, monkeypatch) -> None:
    monkeypatch.setattr(
        UserRateThrottle, "THROTTLE_RATES", {"user": "3/minute", "anon": "3/minute"}
    )
    codes = [api.get("/v1/users").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api.get("/v1/users")
    assert_problem(response, 429)
    assert 0 < int(response["Retry-After"]) <= 60


class TestDocs:
    def test_schema_validates_without_warnings(self) -> None:
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")

    def test_schema_documents_every_operation(self, transactional_db) -> None:
        schema = APIClient().get("/api/schema/?format=json").json()
        paths = schema["paths"]
        assert set(paths["/v1/users"]) == {"get", "post"}
        assert set(paths["/v1/users/{user_id}"]) == {"get", "put", "patch", "delete"}
        assert "get" in paths["/v1/users/{user_id}/events"]
        assert "get" in paths["/v1/events"]
        assert "get" in paths["/v1/streams/{stream_id}"]
        create = paths["/v1/users"]["post"]
        assert {"201", "400", "401", "409", "422", "429"} <= set(create["responses"])
        assert "Location" in create["responses"]["201"]["headers"]
        patch = paths["/v1/users/{user_id}"]["patch"]
        assert "If-Match" in {p["name"] for p in patch["parameters"]}
        assert "412" in patch["responses"]
        assert "bearerAuth" in schema["components"]["securitySchemes"]

    @pytest.mark.parametrize("url", ["/api/", "/api/redoc/", "/api/?script="])
    def test_docs_pages_load_nothing_from_the_internet(self, url, transactional_db) -> None:
        response = APIClient().get(url)
        assert response.status_code == 200
        text = response.content.decode()
        if not url.endswith("script="):
            assert "/static/drf_spectacular_sidecar/" in text
        assert re.findall(r"https?://[^\s\"'<>]+", text) == []  # fonts, CDNs, validators
        assert '"validatorUrl": null' in text or "script=" not in url

    def test_each_operation_lists_the_statuses_it_can_answer(self, transactional_db) -> None:
        """Not every error status on every operation: a feed read cannot conflict (409)."""
        schema = APIClient().get("/api/schema/?format=json").json()
        common = {"400", "401", "429", "503"}
        expected = {
            ("get", "/v1/events"): {"200", "403"},
            ("get", "/v1/streams/{stream_id}"): {"200", "403", "404"},
            ("get", "/v1/users"): {"200"},
            ("post", "/v1/users"): {"201", "403", "409", "413", "415", "422"},
            ("get", "/v1/users/{user_id}"): {"200", "404"},
            ("put", "/v1/users/{user_id}"): {"200", "403", "404", "409", "412", "413", "415"},
            ("patch", "/v1/users/{user_id}"): {"200", "403", "404", "409", "412", "413", "415"},
            ("delete", "/v1/users/{user_id}"): {"204", "403", "404", "409", "412"},
            ("get", "/v1/users/{user_id}/events"): {"200", "404"},
            ("post", "/v1/users/{user_id}/erase"): {"200", "403", "404", "409"},
            ("get", "/v1/users/{user_id}/export"): {"200", "403", "404"},
        }
        listed = {
            (method, path): set(operation["responses"])
            for path, operations in schema["paths"].items()
            for method, operation in operations.items()
        }
        assert listed == {operation: common | codes for operation, codes in expected.items()}

    def test_every_body_and_response_has_a_real_example(self, transactional_db) -> None:
        schema = APIClient().get("/api/schema/?format=json").json()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                contents = [("request", operation.get("requestBody", {}).get("content", {}))]
                contents += [
                    (code, r.get("content", {})) for code, r in operation["responses"].items()
                ]
                for where, content in contents:
                    for media_type, body in content.items():
                        examples = body.get("examples", {})
                        assert examples, (method, path, where, media_type)
                        values = json.dumps([e["value"] for e in examples.values()])
                        assert '"string"' not in values, (method, path, where)
        problem = schema["paths"]["/v1/users/{user_id}"]["patch"]["responses"]["412"]
        (example,) = problem["content"]["application/problem+json"]["examples"].values()
        assert example["value"]["status"] == 412
        assert "current_version" in example["value"]

    def test_the_bearer_scheme_is_declared_once(self, transactional_db) -> None:
        schema = APIClient().get("/api/schema/?format=json").json()
        assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "cookieAuth"}
        assert "security" not in schema  # each operation says it; no global duplicate
        for operations in schema["paths"].values():
            for operation in operations.values():
                assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}]


def test_probes(transactional_db) -> None:
    client = APIClient()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.content
    assert ready.json() == {
        "status": "ok", "database": "ok", "migrations": "ok", "broker": "ok"
    }  # fmt: skip
