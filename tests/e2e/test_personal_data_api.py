"""Erasure and export over HTTP: who may, what comes back, and what the export holds."""

from __future__ import annotations

import json
import uuid
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.management import call_command
from rest_framework.test import APIClient

from eventstore.types import ERASED
from tests.e2e.helpers import assert_problem, new_user, project
from tests.faults import drive_in_process
from users.authentication import issue_token

pytestmark = pytest.mark.django_db(transaction=True)


def staff_client(username: str, *codenames: str) -> APIClient:
    user = get_user_model().objects.create_user(username=username, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def officer(transactional_db) -> APIClient:
    return staff_client("officer", "erase_user", "export_user")


def test_erase_and_export_need_staff_with_their_own_permission(api, staff) -> None:
    user = new_user(api)
    exporter_only = staff_client("exporter", "export_user")
    for client in (api, staff, exporter_only):  # a token client; staff without the permission
        assert_problem(client.post(f"/v1/users/{user['id']}/erase"), 403)
    for client in (api, staff):
        assert_problem(client.get(f"/v1/users/{user['id']}/export"), 403)
    assert exporter_only.get(f"/v1/users/{user['id']}/export").status_code == 200
    assert_problem(APIClient().post(f"/v1/users/{user['id']}/erase"), 401)
    events = api.get(f"/v1/users/{user['id']}/events").json()["events"]
    assert [e["event_type"] for e in events] == ["UserCreated"]  # nothing erased


def test_unknown_and_malformed_ids(officer) -> None:
    assert_problem(officer.post(f"/v1/users/{uuid.uuid4()}/erase"), 404)
    assert_problem(officer.get(f"/v1/users/{uuid.uuid4()}/export"), 404)
    assert_problem(officer.post("/v1/users/not-a-uuid/erase"), 400)
    assert_problem(officer.get("/v1/users/not-a-uuid/export"), 400)


def test_an_erased_user_reads_as_erased_everywhere(api, officer, event_viewer) -> None:
    user = new_user(api, email="everywhere@example.com", first_name="Evie", last_name="Where")
    erased = officer.post(f"/v1/users/{user['id']}/erase")
    body = erased.json()
    assert (body["status"], body["email"], body["first_name"], body["last_name"]) == (
        "erased", "", "", "",
    )  # fmt: skip
    assert erased["ETag"] == f'"{body["version"]}"'
    project()
    detail = api.get(f"/v1/users/{user['id']}", {"wait_for": body["position"]}).json()
    assert (detail["status"], detail["email"], detail["first_name"]) == ("erased", "", "")
    listed = api.get("/v1/users", {"status": "erased"}).json()["results"]
    assert [row["id"] for row in listed] == [user["id"]]
    assert api.get("/v1/users", {"email": "everywhere@example.com"}).json()["count"] == 0
    events = api.get(f"/v1/users/{user['id']}/events").json()["events"]
    assert [e["event_type"] for e in events] == ["UserCreated", "UserErased"]
    assert events[0]["data"]["email"] == ERASED
    assert events[0]["data"]["user_id"] == user["id"]  # the subject is no personal field
    feed = event_viewer.get("/v1/events", {"category": "user"}).json()["events"]
    assert ERASED in {e["data"].get("first_name") for e in feed}
    assert "Evie" not in json.dumps(feed)


def test_a_duplicate_email_error_does_not_repeat_the_address(api) -> None:
    new_user(api, email="private.address@example.com")
    response = api.post(
        "/v1/users",
        {"email": "private.address@example.com", "first_name": "A", "last_name": "B"},
        format="json",
    )
    assert "private.address" not in json.dumps(assert_problem(response, 409))


def export(client: APIClient, user_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/users/{user_id}/export")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def test_the_export_holds_everything_stored_about_the_person(api, officer) -> None:
    account = get_user_model().objects.create_user(username="ada-api", email="Ada@Example.com")
    token, _ = issue_token(account, "ada's script")
    user = new_user(api, email="ada@example.com", first_name="Ada", last_name="Byron")
    api.patch(f"/v1/users/{user['id']}", {"last_name": "Lovelace"}, format="json")
    drive_in_process()  # the welcome saga runs and sends its email
    assert [m.to for m in mail.outbox] == [["ada@example.com"]]

    document = export(officer, user["id"])
    assert document["schema"] == "user-export/1"
    assert document["user_id"] == user["id"]
    assert document["erased"] is False
    assert document["profile"] == {
        "id": user["id"],
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "status": "active",
        "welcomed_at": document["profile"]["welcomed_at"],
        "version": 2,
    }
    assert document["profile"]["welcomed_at"]
    assert document["read_model"]["email"] == "ada@example.com"
    kinds = [e["event_type"] for e in document["events"]]
    assert kinds == ["UserCreated", "UserUpdated", "UserWelcomed"]
    created = document["events"][0]
    assert created["data"] == {
        "user_id": user["id"],
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Byron",  # the past too
    }
    assert created["metadata"]["actor"] == "user:client"
    assert created["metadata"]["correlation_id"]
    assert document["events"][2]["metadata"]["actor"] == "saga:welcome"
    (saga,) = document["sagas"]
    assert (saga["saga_type"], saga["status"]) == ("welcome", "completed")
    (sent,) = document["emails_sent"]
    assert sent["template"] == "sagas/welcome_email"
    assert sent["sent_at"]
    assert document["api_tokens"] == [
        {
            "prefix": token.prefix,
            "name": "ada's script",
            "created_at": token.created_at.isoformat(),
            "last_used_at": None,
        }
    ]
    # The same document from the command line.
    out = StringIO()
    call_command("export_user", user["id"], stdout=out)
    from_command = json.loads(out.getvalue())
    assert {k: v for k, v in from_command.items() if k != "exported_at"} == {
        k: v for k, v in document.items() if k != "exported_at"
    }


def test_an_export_after_erasure_holds_nothing_personal(api, officer) -> None:
    user = new_user(api, email="gone.person@example.com", first_name="Gonzo", last_name="Away")
    drive_in_process()
    officer.post(f"/v1/users/{user['id']}/erase")
    drive_in_process()
    document = export(officer, user["id"])
    assert document["erased"] is True
    assert document["profile"]["email"] == ""
    assert document["read_model"]["status"] == "erased"
    assert [e["event_type"] for e in document["events"]][-1] == "UserErased"
    assert document["events"][0]["data"]["first_name"] == ERASED
    assert document["sagas"][0]["data"].get("email") is None
    text = json.dumps(document).lower()
    for value in ("gone.person", "gonzo"):
        assert value not in text


def test_the_admin_shows_personal_fields_opened_then_erased(api, officer) -> None:
    from django.test import Client

    from eventstore.models import Event

    root = get_user_model().objects.create_superuser("root", "root@example.com", "root-pass-1")
    admin = Client()
    admin.force_login(root)
    user = new_user(api, email="shown.in.admin@example.com", first_name="Adminia")
    created = Event.objects.get(stream_id=f"user-{user['id']}", event_type="UserCreated")
    assert "Adminia" not in json.dumps(created.data)  # stored sealed
    pages = [
        f"/admin/eventstore/event/{created.position}/change/",
        f"/admin/eventstore/stream/user-{user['id']}/change/",
    ]
    for page in pages:
        body = admin.get(page).content.decode()
        assert "Adminia" in body, page
        assert "shown.in.admin@example.com" in body, page
    officer.post(f"/v1/users/{user['id']}/erase")
    for page in pages:
        body = admin.get(page).content.decode()
        assert "Adminia" not in body, page
        assert ERASED in body, page
