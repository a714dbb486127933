"""Security: who may call what (every operation in the schema, every role), credentials,
limits, injection through every parameter, and no route that alters the events table.

Complements tests/e2e/test_auth_and_docs.py (401s, CSRF, token issuing, 429) and
tests/e2e/test_production_settings.py (``check --deploy``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework.throttling import AnonRateThrottle

from eventstore import reads
from eventstore.models import Event, Stream
from tests.conftest import grant
from tests.e2e.helpers import assert_problem, new_user, project
from users.authentication import issue_token
from users.models import ApiToken, UserRecord

pytestmark = pytest.mark.django_db(transaction=True)

STAFF_ONLY = re.compile(r"^/v1/(events|streams/)")
# Staff with a permission of their own (users.erase_user, users.export_user): superusers.
PERSONAL_DATA = re.compile(r"^/v1/users/\{user_id\}/(erase|export)$")
WRITE_METHODS = ("post", "put", "patch", "delete")


def schema_operations() -> list[tuple[str, str]]:
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    return [(method, path) for path, ops in schema["paths"].items() for method in ops]


def events_fingerprint() -> tuple[int, str]:
    """Count and digest of every stored event: any change to the table changes it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), md5(coalesce(string_agg(position::text || stream_id || "
            "version::text || event_id::text || data::text || metadata::text, ',' "
            "ORDER BY position), '')) FROM events"
        )
        return cursor.fetchone()


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user, 'security')[1]}")
    return client


@pytest.fixture
def roles(transactional_db) -> dict[str, APIClient]:
    """A client of every kind: none, a plain client, staff and superuser (token, session)."""
    users = get_user_model().objects
    plain = users.create_user(username="plain", password="plain-pass-123")
    staff = users.create_user(username="staffer", password="staff-pass-123", is_staff=True)
    root = users.create_superuser(username="root", password="root-pass-123", email="r@x.org")
    viewer = grant(
        users.create_user(username="viewer", password="viewer-pass-123", is_staff=True),
        "eventstore.view_event",
    )
    staff_session, root_session = APIClient(), APIClient()
    staff_session.force_login(staff)
    root_session.force_login(root)
    return {
        "anonymous": APIClient(),
        "client": token_client(plain),
        "staff": token_client(staff),  # staff without model permissions
        "staff-session": staff_session,
        "event-viewer": token_client(viewer),  # staff with eventstore.view_event
        "superuser": token_client(root),
        "superuser-session": root_session,
    }


@pytest.fixture
def existing(roles) -> dict[str, str]:
    """A real user, so the matrix reaches past "not found" into the views."""
    body = new_user(roles["client"])
    project()
    return {"user_id": body["id"], "stream_id": f"user-{body['id']}"}


def forbidden(role: str, path: str) -> bool:
    # Staff status alone is not enough for the event feeds: the admin's view_event
    # permission is; erasure and export take permissions of their own.
    if role in ("client", "staff", "staff-session") and STAFF_ONLY.match(path):
        return True
    return not role.startswith("superuser") and bool(PERSONAL_DATA.match(path))


def _call(client: APIClient, method: str, path: str, ids: dict[str, str]) -> Any:
    url = path.format(**ids)
    body = {"first_name": "Matrix"} if method in ("put", "patch", "post") else None
    if method == "post" and url == "/v1/users":
        body = {
            "email": f"m{uuid.uuid4().hex[:8]}@example.com",
            "first_name": "M",
            "last_name": "X",
        }
    if method == "put":
        body = {
            "email": f"p{uuid.uuid4().hex[:8]}@example.com",
            "first_name": "P",
            "last_name": "X",
        }
    return getattr(client, method)(url, body, format="json")


class TestPermissionMatrix:
    """Every operation the schema documents, called by every role."""

    def test_the_schema_lists_the_operations_this_matrix_expects(self) -> None:
        operations = set(schema_operations())
        assert {("get", "/v1/events"), ("get", "/v1/streams/{stream_id}")} <= operations
        assert {(m, "/v1/users/{user_id}") for m in ("get", "put", "patch", "delete")} <= operations
        assert {("post", "/v1/users/{user_id}/erase"), ("get", "/v1/users/{user_id}/export")} <= (
            operations
        )
        assert len(operations) == 11  # a new endpoint must be thought about here

    @pytest.mark.parametrize(
        "role",
        [
            "anonymous",
            "client",
            "staff",
            "staff-session",
            "event-viewer",
            "superuser",
            "superuser-session",
        ],
    )
    def test_every_operation_for_every_role(self, roles, existing, role) -> None:
        client = roles[role]
        # Deletes, then the erasure, last, so the user exists and can change for the others.
        operations = sorted(
            schema_operations(), key=lambda op: (op[1].endswith("/erase"), op[0] == "delete")
        )
        for method, path in operations:
            response = _call(client, method, path, existing)
            where = f"{role}: {method.upper()} {path} -> {response.status_code}"
            if role == "anonymous":
                assert response.status_code == 401, where
                assert response["WWW-Authenticate"].startswith("Bearer"), where
            elif forbidden(role, path):
                assert response.status_code == 403, where
            else:
                assert response.status_code in (200, 201, 204), where
            if response.status_code >= 400:
                assert_problem(response, response.status_code)

    @pytest.mark.parametrize("role", ["anonymous", "client", "staff", "superuser"])
    def test_probes_and_docs_are_public_and_reveal_nothing(self, roles, role) -> None:
        client = roles[role]
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/api/schema/", {"format": "json"}).status_code == 200
        ready = client.get("/ready").json()
        assert set(ready) == {"status", "database", "migrations", "broker"}

    def test_admin_needs_staff_and_the_event_pages_a_superuser(self, roles) -> None:
        users = get_user_model().objects
        anonymous = APIClient()
        response = anonymous.get("/admin/")
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
        plain = APIClient()
        plain.force_login(users.get(username="plain"))  # a client's user, not staff
        assert plain.get("/admin/").status_code == 302
        if Event not in admin.site._registry:
            pytest.skip("the event admin is not registered (yet)")
        changelist = reverse("admin:eventstore_event_changelist")
        assert anonymous.get(changelist).status_code == 302
        assert plain.get(changelist).status_code == 302
        staff = APIClient()
        staff.force_login(users.get(username="staffer"))  # staff without model permissions
        assert staff.get(changelist).status_code == 403
        root = APIClient()
        root.force_login(users.get(username="root"))
        assert root.get(changelist).status_code == 200


class TestCredentials:
    def test_only_the_bearer_header_authenticates(self, client_user) -> None:
        _, token = issue_token(client_user, "where")
        attempts = [
            {"HTTP_AUTHORIZATION": f"Token {token}"},
            {"HTTP_AUTHORIZATION": f"Basic {token}"},
            {"HTTP_AUTHORIZATION": f"Bearer {token} extra"},
            {"HTTP_AUTHORIZATION": f"Bearer {token[:8]}"},  # the stored prefix alone
            {"HTTP_AUTHORIZATION": f"Bearer {token}x"},
            {"HTTP_X_API_KEY": token},
        ]
        for headers in attempts:
            assert APIClient().get("/v1/users", **headers).status_code == 401, headers
        assert APIClient().get("/v1/users", {"token": token}).status_code == 401
        assert APIClient().get("/v1/users", HTTP_AUTHORIZATION=f"bearer {token}").status_code == 200

    def test_the_plain_token_is_stored_nowhere(self, client_user) -> None:
        _, token = issue_token(client_user, "leak-check")
        record = ApiToken.objects.get(name="leak-check")
        assert record.key_hash == hashlib.sha256(token.encode()).hexdigest()
        with connection.cursor() as cursor:
            cursor.execute("SELECT row_to_json(t)::text FROM users_api_token t")
            stored = " ".join(row[0] for row in cursor.fetchall())
        assert token not in stored
        assert token[8:] not in stored  # not even beyond the shown prefix

    def test_a_deleted_token_stops_working_at_once(self, client_user) -> None:
        record, token = issue_token(client_user, "revoked")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert client.get("/v1/users").status_code == 200
        record.delete()
        assert_problem(client.get("/v1/users"), 401)


class TestLimits:
    @pytest.mark.parametrize("method", ["post", "put", "patch"])
    def test_every_write_refuses_a_large_body_before_parsing_it(self, api, method) -> None:
        user_id = new_user(api)["id"]
        url = "/v1/users" if method == "post" else f"/v1/users/{user_id}"
        body = {"email": "big@example.com", "first_name": "x" * 70_000, "last_name": "y"}
        before = events_fingerprint()
        assert_problem(getattr(api, method)(url, body, format="json"), 413)
        assert events_fingerprint() == before

    def test_deeply_nested_json_is_a_400_not_a_500(self, api) -> None:
        for body in ("[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
            response = api.generic("POST", "/v1/users", body, content_type="application/json")
            assert "nested too deeply" in assert_problem(response, 400)["detail"]

    @pytest.mark.parametrize(
        "body",
        [
            '{"\\ud800": 1}',
            '{"email": "a@example.com", "first_name": "A", "last_name": "B", "\\udfff": 1}',
            '{"email": "\\ud800@example.com", "first_name": "A", "last_name": "B"}',
            '{"email": "a@example.com", "first_name": {"x": ["\\udc00"]}, "last_name": "B"}',
            '{"email": "a@example.com", "first_name": [{"\\ud83d": 1}], "last_name": "B"}',
            '["\\ud800"]',
            '"\\udbff"',
        ],
    )
    def test_a_lone_surrogate_anywhere_in_a_body_is_a_400(self, api, caplog, body) -> None:
        """Valid JSON, but no Unicode: it failed to render the error naming the key (500)."""
        user_id = new_user(api)["id"]
        caplog.set_level(logging.WARNING)
        before = events_fingerprint()
        for method, url in [
            ("POST", "/v1/users"),
            ("PUT", f"/v1/users/{user_id}"),
            ("PATCH", f"/v1/users/{user_id}"),
        ]:
            response = api.generic(method, url, body, content_type="application/json")
            assert "lone surrogate" in assert_problem(response, 400)["detail"], (method, body)
        assert events_fingerprint() == before
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # A proper pair is one character, and welcome in a name.
        pair = '{"first_name": "Ada \\ud83d\\ude00"}'
        response = api.generic(
            "PATCH", f"/v1/users/{user_id}", pair, content_type="application/json"
        )
        assert response.json()["first_name"] == "Ada \U0001f600"

    def test_anonymous_clients_are_throttled_with_retry_after(self, monkeypatch) -> None:
        # Only views open to anonymous clients reach the throttle; elsewhere the missing
        # credentials are refused (401) first.
        monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "2/minute"})
        client = APIClient()
        codes = [client.get("/api/schema/").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        response = client.get("/api/schema/")
        assert_problem(response, 429)
        assert 0 < int(response["Retry-After"]) <= 60

    def test_token_clients_are_not_held_to_the_anonymous_limit(self, api, monkeypatch) -> None:
        monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "2/minute"})
        codes = [api.get("/v1/users").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 200]
        anonymous = [APIClient().get("/api/schema/").status_code for _ in range(3)]
        assert anonymous == [200, 200, 429]

    def test_rate_limits_fail_open_when_redis_is_unreachable(self, api, settings) -> None:
        """Availability over rate limiting: commands need only PostgreSQL (invariant 6)."""
        settings.CACHES = {
            "default": {
                "BACKEND": "config.cache.RedisCache",
                "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
                "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
            }
        }
        # Listen on the logger itself: a Celery test worker earlier in the run may have
        # raised the root logger's level.
        warnings: list[logging.LogRecord] = []
        logger = logging.getLogger("config.throttling")
        handler = logging.Handler()
        handler.emit = warnings.append  # type: ignore[method-assign]
        level, disabled = logger.level, logger.disabled
        logger.setLevel(logging.WARNING)
        logger.disabled = False
        logger.addHandler(handler)
        try:
            assert api.get("/v1/users").status_code == 200
            assert new_user(api)["version"] == 0
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.disabled = disabled
        assert any("rate limit not checked" in r.getMessage() for r in warnings)


# --- injection through every parameter ----------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE events; --",
    "'; UPDATE events SET data = '{}'; --",
    "'); DELETE FROM events WHERE ('1'='1",
    "$$; TRUNCATE events; $$",
    "1) OR (1=1",
    '{"$gt": ""}',
    '{"$where": "1 == 1"}',
    "[]",
    "__proto__",
    "\x00",
    "%00",
    "\u202e",
    "-1",
    "1e309",
    "99999999999999999999999999",
    "NaN",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "x" * 5000,
]
QUERY_PARAMETERS = {
    "/v1/users": ["email", "status", "search", "ordering", "limit", "offset", "wait_for"],
    "/v1/users/{user_id}": ["wait_for"],
    "/v1/users/{user_id}/events": ["from_version", "limit"],
    "/v1/users/{user_id}/export": [],
    "/v1/events": ["after", "limit", "category", "type"],
    "/v1/streams/{stream_id}": ["from_version", "limit"],
}


def test_the_injection_list_covers_every_documented_parameter() -> None:
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    documented = {
        path: sorted(p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "query")
        for path, ops in schema["paths"].items()
        if "get" in ops
    }
    assert documented == {path: sorted(names) for path, names in QUERY_PARAMETERS.items()}


class TestInjection:
    @pytest.fixture
    def world(self, api, settings) -> dict[str, Any]:
        settings.READ_YOUR_WRITES_TIMEOUT_SECONDS = 0.05
        staff = grant(
            get_user_model().objects.create_user(
                username="inj-staff", password="x-pass-123", is_staff=True
            ),
            "eventstore.view_event",
        )
        users = [new_user(api, first_name=name) for name in ("Ada", "Grace", "Alan")]
        project()
        return {"api": api, "staff": token_client(staff), "user_id": users[0]["id"]}

    @pytest.mark.parametrize("path", sorted(QUERY_PARAMETERS))
    def test_every_query_parameter(self, world, path) -> None:
        client = world["staff"] if STAFF_ONLY.match(path) else world["api"]
        url = path.format(user_id=world["user_id"], stream_id=f"user-{world['user_id']}")
        before = events_fingerprint()
        for name in QUERY_PARAMETERS[path]:
            for value in INJECTIONS:
                response = client.get(url, {name: value})
                where = f"{path}?{name}={value[:40]!r} -> {response.status_code}"
                assert response.status_code in (200, 400), where
                if response.status_code == 400:
                    assert_problem(response, 400)
                elif path == "/v1/users" and name in ("email", "search"):
                    assert response.json()["count"] == 0, where  # matched literally: nothing
        assert events_fingerprint() == before

    @pytest.mark.parametrize("value", INJECTIONS)
    def test_path_ids(self, world, value) -> None:
        before = events_fingerprint()
        for client, template in [
            (world["api"], "/v1/users/{}"),
            (world["api"], "/v1/users/{}/events"),
            (world["staff"], "/v1/streams/{}"),
            (world["staff"], "/v1/streams/user-{}"),
        ]:
            url = template.format(value.replace("/", "%2F").replace("?", "%3F"))
            response = client.get(url)
            assert response.status_code in (400, 404), (url[:80], response.status_code)
            assert_problem(response, response.status_code)
        for method in ("put", "patch", "delete"):
            response = getattr(world["api"], method)(f"/v1/users/{value}", {}, format="json")
            assert response.status_code in (400, 404), (method, value[:40], response.status_code)
        assert events_fingerprint() == before

    @pytest.mark.parametrize("value", INJECTIONS)
    def test_json_bodies_store_text_literally_or_refuse_it(self, world, value) -> None:
        api = world["api"]
        body = {
            "email": f"j{uuid.uuid4().hex[:8]}@example.com",
            "first_name": value,
            "last_name": value,
        }
        response = api.post("/v1/users", body, format="json")
        if response.status_code == 201:
            created = response.json()
            (stored,) = reads.read_stream(f"user-{created['id']}")  # opened: personal fields
            assert stored.position == created["position"]
            assert stored.data.first_name == stored.data.last_name == value.strip()
        else:
            assert_problem(response, 400)
        assert_problem(
            api.patch(f"/v1/users/{world['user_id']}", {"email": value}, format="json"), 400
        )

    @pytest.mark.parametrize(
        "body",
        [
            {"first_name": {"$ne": None}},
            {"first_name": ["Ada"]},
            {"first_name": 1},
            {"first_name": None},
            {"status": "deleted"},
            {"version": 99},
            {"__proto__": {"is_staff": True}},
            {"constructor": {"prototype": {"admin": True}}},
            {"email": {"$regex": ".*"}},
        ],
    )
    def test_json_structures_and_protected_fields_are_refused(self, world, body) -> None:
        before = events_fingerprint()
        response = world["api"].patch(f"/v1/users/{world['user_id']}", body, format="json")
        assert_problem(response, 400)
        assert events_fingerprint() == before

    def test_headers(self, world) -> None:
        api = world["api"]
        before = events_fingerprint()
        body = {"email": "h@example.com", "first_name": "H", "last_name": "I"}
        for value in INJECTIONS[:12]:
            response = api.post("/v1/users", body, format="json", HTTP_X_CORRELATION_ID=value)
            assert_problem(response, 400)
            response = api.patch(
                f"/v1/users/{world['user_id']}",
                {"first_name": "Q"},
                format="json",
                HTTP_IF_MATCH=value,
            )
            assert_problem(response, 400)
        assert events_fingerprint() == before
        key = "'; DELETE FROM users_idempotent_request; --"
        first = api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
        again = api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again["Idempotent-Replayed"] == "true"
        assert UserRecord.objects.count() == 3  # the list is from the read model, not changed


# --- the events table cannot be changed through any route ---------------------------------


class TestEventsAreReadOnlyEverywhere:
    @pytest.fixture
    def stored(self, roles, existing) -> dict[str, Any]:
        roles["client"].patch(f"/v1/users/{existing['user_id']}", {"last_name": "B"}, format="json")
        return {**existing, "before": events_fingerprint()}

    @pytest.mark.parametrize("role", ["staff", "superuser", "superuser-session"])
    def test_no_write_method_on_the_event_routes(self, roles, stored, role) -> None:
        client = roles[role]
        urls = [
            "/v1/events",
            f"/v1/streams/{stored['stream_id']}",
            f"/v1/users/{stored['user_id']}/events",
        ]
        for url in urls:
            for method in WRITE_METHODS:
                response = getattr(client, method)(url, {"data": {}}, format="json")
                assert response.status_code in (403, 405), (role, method, url, response.status_code)
                assert_problem(response, response.status_code)
        assert events_fingerprint() == stored["before"]

    def test_the_admin_cannot_add_change_or_delete_events_or_streams(self, roles, stored) -> None:
        registered = [m for m in (Event, Stream) if m in admin.site._registry]
        if not registered:
            pytest.skip("no event store admin registered (yet)")
        root = APIClient()
        root.force_login(get_user_model().objects.get(username="root"))
        event = Event.objects.filter(stream_id=stored["stream_id"]).first()
        stream = Stream.objects.get(stream_id=stored["stream_id"])
        for model, obj in [(Event, event), (Stream, stream)]:
            if model not in registered:
                continue
            name = f"admin:eventstore_{model._meta.model_name}"
            pk = str(obj.pk)
            assert root.get(reverse(f"{name}_change", args=[pk])).status_code == 200  # viewable
            attempts = [
                ("get", reverse(f"{name}_add"), {}),
                ("post", reverse(f"{name}_add"), {"version": 0}),
                ("post", reverse(f"{name}_change", args=[pk]), {"version": 99, "data": "{}"}),
                ("get", reverse(f"{name}_delete", args=[pk]), {}),
                ("post", reverse(f"{name}_delete", args=[pk]), {"post": "yes"}),
            ]
            for method, url, data in attempts:
                response = getattr(root, method)(url, data)
                assert response.status_code in (403, 404, 405), (method, url, response.status_code)
            bulk = root.post(
                reverse(f"{name}_changelist"),
                {"action": "delete_selected", "_selected_action": [pk], "post": "yes"},
            )
            assert bulk.status_code in (200, 302, 403)
        assert events_fingerprint() == stored["before"]
        assert Stream.objects.get(stream_id=stored["stream_id"]).version == stream.version
