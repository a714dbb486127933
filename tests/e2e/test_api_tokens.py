"""API tokens: listed and revoked in the admin, expiring, read-only, made by a command."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from eventstore.models import Event
from tests.e2e.helpers import assert_problem, new_user
from users import authentication
from users.authentication import issue_token
from users.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)
TOKENS = "/admin/users/apitoken/"


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def root(transactional_db) -> Client:
    client = Client()
    client.force_login(
        get_user_model().objects.create_superuser("root", "root@example.com", "root-pass-123")
    )
    return client


class TestAdmin:
    def test_the_admin_lists_tokens_by_prefix_and_owner(self, root, client_user) -> None:
        record, _ = issue_token(client_user, "billing", read_only=True)
        page = root.get(TOKENS)
        assert page.status_code == 200
        html = page.content.decode()
        for shown in (record.prefix, "billing", "client", "read only", "active"):
            assert shown in html
        assert root.get(f"{TOKENS}{record.pk}/change/").status_code == 200
        assert root.get(f"{TOKENS}add/").status_code == 403  # the command issues tokens

    def test_revoking_in_the_admin_stops_the_token_at_once(self, root, client_user) -> None:
        record, token = issue_token(client_user, "leaving")
        client = bearer(token)
        assert client.get("/v1/users").status_code == 200  # now remembered by this process
        response = root.post(TOKENS, {"action": "revoke", "_selected_action": [record.pk]})
        assert response.status_code == 302
        assert not ApiToken.objects.filter(pk=record.pk).exists()
        assert_problem(client.get("/v1/users"), 401)

    def test_staff_without_token_permissions_do_not_see_them(self, client_user) -> None:
        issue_token(client_user, "secret")
        staff = Client()
        staff.force_login(
            get_user_model().objects.create_user("s", password="s-pass-12345", is_staff=True)
        )
        assert staff.get(TOKENS).status_code == 403


class TestExpiry:
    def test_an_expired_token_is_refused(self, client_user) -> None:
        _, token = issue_token(client_user, expires_at=timezone.now() - timedelta(seconds=1))
        assert "expired" in assert_problem(bearer(token).get("/v1/users"), 401)["detail"]

    def test_a_remembered_token_is_refused_once_it_expires(self, client_user, monkeypatch) -> None:
        expires = timezone.now() + timedelta(hours=1)
        _, token = issue_token(client_user, expires_at=expires)
        client = bearer(token)
        assert client.get("/v1/users").status_code == 200
        later = expires + timedelta(seconds=1)
        monkeypatch.setattr(authentication.timezone, "now", lambda: later)
        assert_problem(client.get("/v1/users"), 401)


class TestReadOnly:
    def test_a_read_only_token_reads_and_never_writes(self, client_user, api) -> None:
        user = new_user(api)
        _, token = issue_token(client_user, "dashboard", read_only=True)
        reader = bearer(token)
        assert reader.get("/v1/users").status_code == 200
        assert reader.get(f"/v1/users/{user['id']}/events").status_code == 200
        before = Event.objects.count()
        attempts = [
            reader.post("/v1/users", {"email": "ro@example.com", "first_name": "R",
                                      "last_name": "O"}, format="json"),
            reader.patch(f"/v1/users/{user['id']}", {"first_name": "X"}, format="json"),
            reader.put(f"/v1/users/{user['id']}", {"email": "x@example.com", "first_name": "X",
                                                   "last_name": "Y"}, format="json"),
            reader.delete(f"/v1/users/{user['id']}"),
        ]  # fmt: skip
        for response in attempts:
            assert "read-only" in assert_problem(response, 403)["detail"]
        assert Event.objects.count() == before


class TestCommand:
    def run(self, *args: str) -> str:
        out = StringIO()
        call_command("create_api_token", *args, stdout=out)
        return out.getvalue()

    def test_expires_in_and_read_only(self, client_user) -> None:
        out = self.run("client", "--expires-in", "90d", "--read-only", "--name", "report")
        assert "read only" in out
        assert "expires" in out
        record = ApiToken.objects.get(name="report")
        assert record.read_only
        left = record.expires_at - timezone.now()
        assert timedelta(days=89, hours=23) < left <= timedelta(days=90)
        token = out.strip().splitlines()[-1]
        assert bearer(token).get("/v1/users").status_code == 200

    @pytest.mark.parametrize("duration", ["90", "0d", "-1d", "1y", "soon"])
    def test_a_duration_it_cannot_read_is_an_error(self, client_user, duration) -> None:
        with pytest.raises(CommandError, match="--expires-in"):
            self.run("client", "--expires-in", duration)
        assert not ApiToken.objects.exists()

    def test_an_event_reader_token_reads_the_feed(self, transactional_db) -> None:
        out = self.run("feed-reader", "--create-user", "--event-reader")
        token = out.strip().splitlines()[-1]
        assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token)
        assert bearer(token).get("/v1/events").status_code == 200
        assert get_user_model().objects.get(username="feed-reader").is_staff
