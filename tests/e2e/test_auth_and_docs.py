"""Who may call what, throttling, token issuing, and the self-documenting API."""

from __future__ import annotations

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

    @pytest.mark.parametrize("url", ["/api/", "/api/redoc/"])
    def test_docs_pages_use_local_assets(self, url, transactional_db) -> None:
        response = APIClient().get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn." not in html
        assert "unpkg" not in html


def test_probes(transactional_db) -> None:
    client = APIClient()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.content
    assert ready.json() == {
        "status": "ok", "database": "ok", "migrations": "ok", "broker": "ok"
    }  # fmt: skip
