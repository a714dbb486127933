"""The users API over HTTP (Django's test client through the real URLs and views)."""

from __future__ import annotations

import uuid

import pytest
from django.db import connections
from rest_framework.test import APIClient

from eventstore import reads
from eventstore.models import Event
from tests.conftest import settle
from tests.e2e.helpers import assert_problem, new_user, project
from tests.processes import wait_for
from users import handlers
from users.commands import WelcomeUser
from users.models import EmailReservation, UserRecord

pytestmark = pytest.mark.django_db(transaction=True)


class TestCreate:
    def test_created_with_location_etag_and_position(self, api) -> None:
        response = api.post(
            "/v1/users",
            {"email": " Ada@Example.com", "first_name": " Ada ", "last_name": "Lovelace"},
            format="json",
        )
        assert response.status_code == 201
        body = response.json()
        assert response["Location"] == f"/v1/users/{body['id']}"
        assert response["ETag"] == '"0"'
        assert body["email"] == "ada@example.com"
        assert body["first_name"] == "Ada"
        assert (body["status"], body["version"]) == ("active", 0)
        event = Event.objects.get(position=body["position"])
        assert (event.stream_id, event.event_type) == (f"user-{body['id']}", "UserCreated")
        assert event.metadata["actor"] == "user:client"

    def test_client_chosen_id_and_its_conflict(self, api) -> None:
        user_id = str(uuid.uuid4())
        assert new_user(api, id=user_id)["id"] == user_id
        response = api.post(
            "/v1/users",
            {"id": user_id, "email": "other@example.com", "first_name": "A", "last_name": "B"},
            format="json",
        )
        assert "exists already" in assert_problem(response, 409)["detail"]

    def test_duplicate_email_in_any_case_is_a_conflict(self, api) -> None:
        new_user(api, email="grace@example.com")
        response = api.post(
            "/v1/users",
            {"email": "GRACE@example.COM", "first_name": "G", "last_name": "H"},
            format="json",
        )
        assert "belongs to another user" in assert_problem(response, 409)["detail"]
        assert EmailReservation.objects.count() == 1

    def test_an_internationalised_domain_in_either_spelling_is_one_email(self, api) -> None:
        created = new_user(api, email="ada@exämple.com")
        assert created["email"] == "ada@exämple.com"
        response = api.post(
            "/v1/users",
            {"email": "ada@xn--exmple-cua.com", "first_name": "A", "last_name": "L"},
            format="json",
        )
        assert "belongs to another user" in assert_problem(response, 409)["detail"]
        project()
        found = api.get("/v1/users", {"email": "ADA@XN--EXMPLE-CUA.COM"}).json()
        assert [user["id"] for user in found["results"]] == [created["id"]]

    def test_concurrent_creates_with_one_email_make_one_user(self, api, threads) -> None:
        def create(i: int) -> int:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.token}")
            body = {"email": "race@example.com", "first_name": f"R{i}", "last_name": "X"}
            return client.post("/v1/users", body, format="json").status_code

        codes = threads(10, create)
        assert sorted(codes) == [201] + [409] * 9
        assert Event.objects.filter(event_type="UserCreated").count() == 1

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"email": "nope", "first_name": "A", "last_name": "B"}, "email"),
            ({"email": "a@example.com", "first_name": "", "last_name": "B"}, "first_name"),
            ({"email": "a@example.com", "first_name": "A" * 101, "last_name": "B"}, "first_name"),
            ({"email": "a@example.com", "first_name": "A\tB", "last_name": "B"}, "first_name"),
            ({"email": "a@example.com", "first_name": 7, "last_name": "B"}, "first_name"),
            ({"email": ["a@example.com"], "first_name": "A", "last_name": "B"}, "email"),
            ({"first_name": "A", "last_name": "B"}, "email"),
            ({"email": "a@example.com", "first_name": "A", "last_name": "B", "age": 3}, "age"),
            ({"id": "nope", "email": "a@example.com", "first_name": "A", "last_name": "B"}, "id"),
        ],
    )
    def test_bad_fields_are_400_naming_the_field(self, api, body, field) -> None:
        problem = assert_problem(api.post("/v1/users", body, format="json"), 400)
        assert field in problem["errors"]
        assert Event.objects.count() == 0


class TestBadRequests:
    def test_malformed_json(self, api) -> None:
        response = api.post("/v1/users", "{bad", content_type="application/json")
        assert "JSON parse error" in assert_problem(response, 400)["detail"]

    @pytest.mark.parametrize("payload", ["[]", '"text"', "42", "null"])
    def test_body_that_is_not_an_object(self, api, payload) -> None:
        assert_problem(api.post("/v1/users", payload, content_type="application/json"), 400)

    def test_wrong_content_type(self, api) -> None:
        assert_problem(api.post("/v1/users", "email=a", content_type="text/plain"), 415)

    def test_oversized_body(self, api) -> None:
        body = {"email": "a@example.com", "first_name": "A" * 100_000, "last_name": "B"}
        assert_problem(api.post("/v1/users", body, format="json"), 413)

    def test_invalid_uuid_in_path(self, api) -> None:
        for method in ("get", "put", "patch", "delete"):
            assert_problem(getattr(api, method)("/v1/users/12345", {}, format="json"), 400)
        assert_problem(api.get("/v1/users/xyz/events"), 400)

    def test_method_not_allowed(self, api) -> None:
        user = new_user(api)
        assert_problem(api.post(f"/v1/users/{user['id']}", {}, format="json"), 405)
        assert_problem(api.delete("/v1/users"), 405)

    def test_unknown_user(self, api) -> None:
        missing = uuid.uuid4()
        assert_problem(api.get(f"/v1/users/{missing}"), 404)
        assert_problem(api.patch(f"/v1/users/{missing}", {"first_name": "X"}, format="json"), 404)
        assert_problem(api.delete(f"/v1/users/{missing}"), 404)
        assert_problem(api.get(f"/v1/users/{missing}/events"), 404)

    @pytest.mark.parametrize(
        "query", ["limit=0", "limit=abc", "offset=-1", "status=gone", "ordering=password", "x=1"]
    )
    def test_bad_list_parameters(self, api, query) -> None:
        assert_problem(api.get(f"/v1/users?{query}"), 400)


class TestReadModel:
    def test_list_filters_search_ordering_and_pages(self, api) -> None:
        new_user(api, email="b@example.com", first_name="Bea", last_name="Zed")
        new_user(api, email="a@example.com", first_name="Al", last_name="Young")
        gone = new_user(api, email="c@example.com", first_name="Cy", last_name="Xu")
        api.delete(f"/v1/users/{gone['id']}")
        project()
        page = api.get("/v1/users?ordering=email&limit=2").json()
        assert page["count"] == 3
        assert [u["email"] for u in page["results"]] == ["a@example.com", "b@example.com"]
        assert page["next"] is not None
        assert [u["email"] for u in api.get("/v1/users?status=deleted").json()["results"]] == [
            "c@example.com"
        ]
        assert api.get("/v1/users?email=B@EXAMPLE.com").json()["count"] == 1
        assert [u["first_name"] for u in api.get("/v1/users?search=you").json()["results"]] == [
            "Al"
        ]
        assert api.get("/v1/users?search=zz%27%3B--").json()["count"] == 0

    def test_detail_etag_is_the_version(self, api) -> None:
        user = new_user(api)
        api.patch(f"/v1/users/{user['id']}", {"last_name": "King"}, format="json")
        project()
        response = api.get(f"/v1/users/{user['id']}")
        assert response.status_code == 200
        assert response["ETag"] == '"1"'
        assert response.json()["last_name"] == "King"


class TestUpdates:
    def test_put_patch_and_noop(self, api) -> None:
        user = new_user(api, email="p@example.com")
        put = api.put(
            f"/v1/users/{user['id']}",
            {"email": "p@example.com", "first_name": "Pat", "last_name": "Lee"},
            format="json",
        )
        assert put.status_code == 200
        assert put.json()["version"] == 1
        stored = reads.read_stream(f"user-{user['id']}")[-1].data
        assert (stored.email, stored.first_name, stored.last_name) == (None, "Pat", "Lee")
        noop = api.patch(f"/v1/users/{user['id']}", {"first_name": "Pat"}, format="json")
        assert noop.status_code == 200
        assert (noop.json()["version"], noop.json()["position"]) == (1, None)
        incomplete = api.put(f"/v1/users/{user['id']}", {"first_name": "X"}, format="json")
        assert {"email", "last_name"} <= set(assert_problem(incomplete, 400)["errors"])

    def test_if_match(self, api) -> None:
        user = new_user(api)
        url = f"/v1/users/{user['id']}"
        ok = api.patch(url, {"first_name": "B"}, format="json", HTTP_IF_MATCH='"0"')
        assert ok.status_code == 200
        stale = api.patch(url, {"first_name": "C"}, format="json", HTTP_IF_MATCH='"0"')
        assert assert_problem(stale, 412)["current_version"] == 1
        assert_problem(api.patch(url, {"first_name": "C"}, format="json", HTTP_IF_MATCH="v1"), 400)
        assert_problem(api.delete(url, HTTP_IF_MATCH='"0"'), 412)
        assert api.delete(url, HTTP_IF_MATCH='"1"').status_code == 204

    def test_if_match_star_matches_any_version_of_an_existing_user(self, api) -> None:
        """RFC 9110: ``*`` matches any current representation; it used to be a 400."""
        user = new_user(api)
        url = f"/v1/users/{user['id']}"
        api.patch(url, {"first_name": "B"}, format="json")
        star = api.patch(url, {"first_name": "C"}, format="json", HTTP_IF_MATCH="*")
        assert (star.status_code, star.json()["version"]) == (200, 2)
        missing = f"/v1/users/{uuid.uuid4()}"
        on_missing = api.patch(missing, {"first_name": "C"}, format="json", HTTP_IF_MATCH="*")
        assert_problem(on_missing, 404)
        assert api.delete(url, HTTP_IF_MATCH="*").status_code == 204

    def test_if_match_compares_strongly_and_takes_a_list(self, api) -> None:
        """RFC 9110: a weak ETag never matches If-Match; any ETag of a list may."""
        user = new_user(api)
        url = f"/v1/users/{user['id']}"
        weak = api.patch(url, {"first_name": "B"}, format="json", HTTP_IF_MATCH='W/"0"')
        assert "weak" in assert_problem(weak, 412)["detail"]
        assert_problem(api.delete(url, HTTP_IF_MATCH='W/"0"'), 412)
        assert reads.stream_version(f"user-{user['id']}") == 0
        listed = api.patch(url, {"first_name": "B"}, format="json", HTTP_IF_MATCH='W/"7", "0"')
        assert listed.status_code == 200
        garbled = api.patch(url, {"first_name": "C"}, format="json", HTTP_IF_MATCH='"0", x')
        assert_problem(garbled, 400)

    def test_the_etag_of_a_create_survives_the_welcome(self, api) -> None:
        """UserWelcomed (the saga's bookkeeping) does not make the client's ETag stale;
        a change the client has not seen does."""
        created = api.post(
            "/v1/users",
            {"email": "etag@example.com", "first_name": "Ada", "last_name": "L"},
            format="json",
        )
        etag, user_id = created["ETag"], created.json()["id"]
        handlers.handle(WelcomeUser(user_id=uuid.UUID(user_id)))  # what the saga does
        assert reads.stream_version(f"user-{user_id}") == 1
        url = f"/v1/users/{user_id}"
        changed = api.patch(url, {"last_name": "King"}, format="json", HTTP_IF_MATCH=etag)
        assert changed.status_code == 200, changed.content
        assert changed.json()["version"] == 2
        stale = api.patch(url, {"last_name": "Byron"}, format="json", HTTP_IF_MATCH=etag)
        assert assert_problem(stale, 412)["current_version"] == 2
        assert api.delete(url, HTTP_IF_MATCH=changed["ETag"]).status_code == 204

    def test_twenty_concurrent_conditional_writes_one_wins(self, api, threads) -> None:
        user = new_user(api)

        def write(i: int) -> int:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.token}")
            return client.patch(
                f"/v1/users/{user['id']}",
                {"last_name": f"Writer{i}"},
                format="json",
                HTTP_IF_MATCH='"0"',
            ).status_code

        codes = threads(20, write)
        assert sorted(codes) == [200] + [412] * 19
        assert reads.stream_version(f"user-{user['id']}") == 1

    def test_unpinned_concurrent_writes_all_land(self, api, threads) -> None:
        user = new_user(api)

        def write(i: int) -> int:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.token}")
            response = client.patch(
                f"/v1/users/{user['id']}", {"last_name": f"W{i}"}, format="json"
            )
            return response.status_code

        codes = threads(4, write)
        assert all(code in (200, 409) for code in codes)
        assert reads.stream_version(f"user-{user['id']}") == codes.count(200)

    def test_email_change_moves_the_reservation(self, api) -> None:
        first = new_user(api, email="one@example.com")
        api.patch(f"/v1/users/{first['id']}", {"email": "two@example.com"}, format="json")
        assert new_user(api, email="one@example.com")["email"] == "one@example.com"
        taken = api.post(
            "/v1/users",
            {"email": "two@example.com", "first_name": "A", "last_name": "B"},
            format="json",
        )
        assert_problem(taken, 409)

    def test_a_change_to_a_taken_email_changes_nothing(self, api) -> None:
        new_user(api, email="taken@example.com")
        user = new_user(api, email="mine@example.com")
        response = api.patch(
            f"/v1/users/{user['id']}",
            {"email": "TAKEN@example.com", "first_name": "Changed"},
            format="json",
        )
        assert_problem(response, 409)
        assert reads.stream_version(f"user-{user['id']}") == 0  # nothing recorded
        still_mine = api.post(
            "/v1/users",
            {"email": "mine@example.com", "first_name": "A", "last_name": "B"},
            format="json",
        )
        assert_problem(still_mine, 409)  # the old reservation was not released


class TestDelete:
    def test_delete_then_everything_else_is_409(self, api) -> None:
        user = new_user(api, email="del@example.com")
        url = f"/v1/users/{user['id']}"
        response = api.delete(url)
        assert response.status_code == 204
        assert response["ETag"] == '"1"'
        assert int(response["Position"]) > user["position"]
        assert_problem(api.delete(url), 409)
        assert_problem(api.patch(url, {"first_name": "Z"}, format="json"), 409)
        assert new_user(api, email="del@example.com")  # the email is free again
        project()
        assert UserRecord.objects.get(id=user["id"]).status == "deleted"


class TestEvents:
    def test_user_events_with_metadata_and_pages(self, api) -> None:
        user = new_user(api)
        for i in range(4):
            api.patch(f"/v1/users/{user['id']}", {"first_name": f"N{i}"}, format="json")
        first = api.get(f"/v1/users/{user['id']}/events?limit=3").json()
        assert [e["version"] for e in first["events"]] == [0, 1, 2]
        assert first["events"][0]["event_type"] == "UserCreated"
        assert first["events"][0]["data"]["email"] == user["email"]
        assert set(first["events"][0]["metadata"]) >= {"correlation_id", "causation_id", "actor"}
        rest = api.get(f"/v1/users/{user['id']}/events?from_version=3").json()
        assert [e["version"] for e in rest["events"]] == [3, 4]
        assert rest["next_from_version"] is None
        assert first["next_from_version"] == 3

    def test_an_event_this_release_cannot_read_is_shown_as_stored(
        self, api, event_viewer, admin_client
    ) -> None:
        """An event written by a newer release (say, before a rollback) breaks no page."""
        user = new_user(api)
        stream = f"user-{user['id']}"
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "INSERT INTO events (stream_id, version, category, event_id, event_type, "
                "data, metadata) VALUES (%s, 1, 'user', %s, 'UserNicknamed', "
                "'{\"nickname\": \"Countess\"}', '{}')",
                [stream, uuid.uuid4()],
            )
            cursor.execute(  # a known type, in a schema version only a newer release reads
                "INSERT INTO events (stream_id, version, category, event_id, event_type, "
                "schema_version, data, metadata) VALUES (%s, 2, 'user', %s, 'UserUpdated', 9, "
                '\'{"first_name": "Ada", "pronouns": "she"}\', \'{}\')',
                [stream, uuid.uuid4()],
            )
        stored = {"nickname": "Countess"}

        own = api.get(f"/v1/users/{user['id']}/events")
        assert own.status_code == 200
        assert own.json()["events"][1]["event_type"] == "UserNicknamed"
        assert own.json()["events"][1]["data"] == stored
        assert own.json()["events"][2]["data"] == {"first_name": "Ada", "pronouns": "she"}
        by_stream = event_viewer.get(f"/v1/streams/{stream}")
        assert by_stream.status_code == 200
        assert by_stream.json()["events"][1]["data"] == stored
        settle()  # the feed shows events below the horizon, which other sessions hold back
        feed = event_viewer.get("/v1/events?category=user&limit=1000")
        assert feed.status_code == 200
        assert [e["data"] for e in feed.json()["events"] if e["stream_id"] == stream][1] == stored
        tail = admin_client.get("/admin/eventstore/event/tail/feed/?after=0-0")
        assert tail.status_code == 200
        assert "Countess" in tail.content.decode()
        # What folds events stays strict: the aggregate refuses rather than guessing.
        refused = api.patch(f"/v1/users/{user['id']}", {"first_name": "X"}, format="json")
        assert_problem(refused, 500)

    def test_correlation_header_is_kept(self, api) -> None:
        correlation = str(uuid.uuid4())
        response = api.post(
            "/v1/users",
            {"email": "c@example.com", "first_name": "C", "last_name": "D"},
            format="json",
            HTTP_X_CORRELATION_ID=correlation,
        )
        event = Event.objects.get(position=response.json()["position"])
        assert event.metadata["correlation_id"] == correlation
        bad = api.post(
            "/v1/users",
            {"email": "e@example.com", "first_name": "C", "last_name": "D"},
            format="json",
            HTTP_X_CORRELATION_ID="not-a-uuid",
        )
        assert_problem(bad, 400)


class TestIdempotency:
    def test_same_key_same_body_replays(self, api) -> None:
        body = {"email": "idem@example.com", "first_name": "I", "last_name": "D"}
        first = api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        again = api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again["Location"] == first["Location"]
        assert again["Idempotent-Replayed"] == "true"
        assert Event.objects.count() == 1

    def test_same_key_other_body_is_422(self, api) -> None:
        body = {"email": "idem@example.com", "first_name": "I", "last_name": "D"}
        api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
        other = api.post(
            "/v1/users", {**body, "first_name": "J"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2"
        )
        assert_problem(other, 422)
        assert Event.objects.count() == 1

    def test_failed_request_does_not_burn_the_key(self, api) -> None:
        bad = {"email": "nope", "first_name": "I", "last_name": "D"}
        assert_problem(api.post("/v1/users", bad, format="json", HTTP_IDEMPOTENCY_KEY="k-3"), 400)
        good = {**bad, "email": "fixed@example.com"}
        assert (
            api.post("/v1/users", good, format="json", HTTP_IDEMPOTENCY_KEY="k-3").status_code
            == 201
        )

    def test_concurrent_repeats_create_once(self, api, threads) -> None:
        body = {"email": "conc@example.com", "first_name": "I", "last_name": "D"}

        def post(i: int) -> tuple[int, str]:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.token}")
            response = client.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
            return response.status_code, response.json()["id"]

        results = threads(8, post)
        assert {code for code, _ in results} == {201}
        assert len({user_id for _, user_id in results}) == 1
        assert Event.objects.count() == 1

    def test_keys_are_per_client(self, api, staff) -> None:
        body = {"email": "x1@example.com", "first_name": "I", "last_name": "D"}
        api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
        other = staff.post(
            "/v1/users", {**body, "email": "x2@example.com"}, format="json",
            HTTP_IDEMPOTENCY_KEY="shared",
        )  # fmt: skip
        assert other.status_code == 201


@pytest.mark.slow
def test_the_etag_of_a_create_stays_valid_after_the_real_welcome_saga(api, celery_worker) -> None:
    created = api.post(
        "/v1/users",
        {"email": "saga-etag@example.com", "first_name": "Ada", "last_name": "L"},
        format="json",
    )
    user_id = created.json()["id"]
    wait_for(lambda: reads.stream_version(f"user-{user_id}") == 1, 60, "the saga's UserWelcomed")
    response = api.patch(
        f"/v1/users/{user_id}", {"last_name": "King"}, format="json", HTTP_IF_MATCH=created["ETag"]
    )
    assert response.status_code == 200, response.content
    connections.close_all()


def test_read_your_writes_with_a_real_worker(api, celery_worker) -> None:
    for _ in range(3):
        user = new_user(api)
        detail = api.get(f"/v1/users/{user['id']}?wait_for={user['position']}")
        assert detail.status_code == 200, detail.content
        assert detail["Read-Model-Caught-Up"] == "true"
        listed = api.get(f"/v1/users?email={user['email']}&wait_for={user['position']}").json()
        assert listed["count"] == 1
    connections.close_all()


def test_waiting_for_a_position_no_event_has_is_a_400_at_once(api, monkeypatch) -> None:
    from eventstore import progress

    user = new_user(api)

    def no_waiting(seconds: float) -> None:
        raise AssertionError("waited for a position no event has")

    monkeypatch.setattr(progress.time, "sleep", no_waiting)
    for url in (f"/v1/users/{user['id']}", "/v1/users"):
        body = assert_problem(api.get(f"{url}?wait_for={user['position'] + 10**9}"), 400)
        assert "No event has position" in str(body)


def test_unknown_url_is_a_json_404(api) -> None:
    body = assert_problem(api.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in body["detail"]


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_every_unknown_api_url_is_a_problem_404_whatever_debug_says(
    api, settings, debug, method
) -> None:
    """With DEBUG on, Django answered its HTML debug page."""
    settings.DEBUG = debug
    for url in ["/v1/nope", "/v1", "/v1/", "/v1/users/x/y", f"/v1/users/{uuid.uuid4()}/events/"]:
        response = getattr(api, method)(url, {}, format="json")
        assert "nothing at" in assert_problem(response, 404)["detail"], (method, url)
    slash = assert_problem(getattr(api, method)("/v1/users/", {}, format="json"), 404)
    assert "end without a slash: /v1/users" in slash["detail"]
    anonymous = getattr(APIClient(), method)("/v1/nope", {}, format="json")
    assert_problem(anonymous, 404)


def test_the_root_leads_to_the_api_docs(transactional_db) -> None:
    response = APIClient().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/api/"


def test_unexpected_error_is_a_500_problem_without_a_trace(api, monkeypatch) -> None:
    from users import selectors

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(selectors, "user_list", broken)
    response = api.get("/v1/users")
    body = assert_problem(response, 500)
    assert "secret internal detail" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert body["detail"].startswith("Something went wrong")


def test_old_idempotency_keys_are_purged(api) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from users.models import IdempotentRequest
    from users.tasks import purge_idempotency_keys

    body = {"email": "old@example.com", "first_name": "O", "last_name": "D"}
    api.post("/v1/users", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    api.post(
        "/v1/users", {**body, "email": "new@example.com"}, format="json", HTTP_IDEMPOTENCY_KEY="new"
    )
    IdempotentRequest.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(days=2)
    )
    assert purge_idempotency_keys() == 1
    assert list(IdempotentRequest.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.slow
def test_waits_beyond_the_process_s_places_answer_at_once(api, monkeypatch, threads) -> None:
    """One client sending many waits cannot hold every thread: past the places, a wait is
    answered at once with where the read model is."""
    import threading

    from users import api as users_api

    monkeypatch.setattr(users_api, "_waiters", threading.BoundedSemaphore(2))
    user = new_user(api)
    project()
    changed = api.patch(f"/v1/users/{user['id']}", {"first_name": "Later"}, format="json").json()
    # No worker runs: the read model never gets to the change.
    url = f"/v1/users/{user['id']}?wait_for={changed['position']}"

    def request(i: int) -> tuple[str, float]:
        import time

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api.token}")
        started = time.monotonic()
        response = client.get(url)
        assert response.status_code == 200, response.content
        return response["Read-Model-Caught-Up"], time.monotonic() - started

    results = threads(8, request)
    quick = [took for answer, took in results if took < 1.0]
    waited = [took for answer, took in results if took >= 1.0]
    assert len(waited) <= 2  # the two places; the user is not projected, so they time out
    assert len(quick) >= 6
    assert {answer for answer, _ in results} == {"false"}
