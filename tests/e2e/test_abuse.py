"""What an attacker tries from outside: guessing admin passwords, flooding the API with
anonymous requests or made-up tokens, and forging X-Forwarded-For to look like many."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rest_framework.throttling import AnonRateThrottle

from config.clientip import client_ip
from tests.e2e.helpers import assert_problem

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "right-pass-12345"


@pytest.fixture
def admin_user(transactional_db) -> None:
    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)


def login(password: str, username: str = "boss", address: str = "203.0.113.7", **extra: str):
    return Client().post(
        LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address, **extra
    )


class TestAdminLockout:
    def test_five_failures_lock_the_username_from_that_address(self, admin_user) -> None:
        codes = [login(f"wrong-{i}").status_code for i in range(5)]
        assert codes == [200, 200, 200, 200, 429]  # the fifth failure locks
        refused = login(PASSWORD)  # the right password, too late
        assert refused.status_code == 429
        assert "Login locked" in refused.content.decode()
        # Elsewhere, and for other usernames, logins go on.
        assert login(PASSWORD, address="198.51.100.9").status_code == 302
        get_user_model().objects.create_user("other", password=PASSWORD, is_staff=True)
        assert login(PASSWORD, username="other").status_code == 302

    def test_a_forged_forwarded_address_does_not_escape_the_lockout(self, admin_user) -> None:
        for i in range(5):
            login(f"wrong-{i}", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        assert login(PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.200").status_code == 429

    def test_a_success_clears_the_count(self, admin_user) -> None:
        for i in range(4):
            login(f"wrong-{i}")
        assert login(PASSWORD).status_code == 302
        assert [login(f"again-{i}").status_code for i in range(4)] == [200] * 4

    def test_staff_unlock_in_the_admin(self, admin_user) -> None:
        from axes.models import AccessAttempt

        for i in range(5):
            login(f"wrong-{i}")
        assert login(PASSWORD).status_code == 429
        other = get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
        staff = Client()
        staff.force_login(other)
        page = staff.get("/admin/axes/accessattempt/")
        assert page.status_code == 200
        assert "boss" in page.content.decode()
        attempt = AccessAttempt.objects.get(username="boss")
        response = staff.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
        assert response.status_code == 302
        assert login(PASSWORD).status_code == 302


class TestThrottlingBeforeAuthentication:
    @pytest.fixture(autouse=True)
    def _low_rate(self, monkeypatch) -> None:
        monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/minute"})

    def test_anonymous_api_requests_are_throttled_before_the_401(self) -> None:
        client = APIClient()
        codes = [client.get("/v1/users").status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        response = client.get("/v1/users")
        assert_problem(response, 429)
        assert 0 < int(response["Retry-After"]) <= 60

    def test_bad_tokens_are_throttled_before_they_cost_a_query(self) -> None:
        client = APIClient()
        for i in range(3):
            client.credentials(HTTP_AUTHORIZATION=f"Bearer made-up-{i}")
            assert_problem(client.get("/v1/users"), 401)
        client.credentials(HTTP_AUTHORIZATION="Bearer made-up-next")
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/v1/users")
        assert_problem(response, 429)
        assert len(queries) == 0, [q["sql"] for q in queries]

    def test_a_valid_token_looked_up_does_not_use_up_the_address(self, api) -> None:
        for _ in range(3):
            api.get("/v1/users")
        anonymous = [APIClient().get("/v1/users").status_code for _ in range(4)]
        assert anonymous == [401, 401, 401, 429]
        assert api.get("/v1/users").status_code == 200  # a known token is not refused

    def test_forwarded_for_from_an_untrusted_client_is_ignored(self) -> None:
        codes = [
            APIClient().get("/v1/users", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}").status_code
            for i in range(4)
        ]
        assert codes == [401, 401, 401, 429]

    def test_forwarded_for_from_a_trusted_proxy_names_the_client(self, settings) -> None:
        settings.TRUSTED_PROXIES = ["127.0.0.0/8"]
        for i in range(4):  # four clients behind the proxy: each has its own window
            response = APIClient().get("/v1/users", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
            assert response.status_code == 401
        codes = [
            APIClient().get("/v1/users", HTTP_X_FORWARDED_FOR="192.0.2.9").status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]


def request(remote: str, forwarded: str | None = None) -> object:
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return type("Request", (), {"META": meta})()


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded", "client"),
    [
        ([], "203.0.113.7", "192.0.2.1", "203.0.113.7"),  # nobody trusted: header ignored
        (["10.0.0.0/8"], "203.0.113.7", "192.0.2.1", "203.0.113.7"),  # not from a proxy
        (["10.0.0.0/8"], "10.0.0.2", "192.0.2.1", "192.0.2.1"),
        (["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 192.0.2.1", "192.0.2.1"),  # forged left part
        (["10.0.0.0/8"], "10.0.0.2", "192.0.2.1, 10.0.0.3", "192.0.2.1"),  # two proxies
        (["10.0.0.0/8"], "10.0.0.2", "10.0.0.4, 10.0.0.3", "10.0.0.4"),  # all proxies
        (["10.0.0.0/8"], "10.0.0.2", "not-an-ip", "10.0.0.2"),
        (["10.0.0.0/8"], "10.0.0.2", None, "10.0.0.2"),
        (["::1", "fd00::/8"], "::1", "2001:db8::5, fd00::1", "2001:db8::5"),
    ],
)
def test_client_ip(settings, trusted, remote, forwarded, client) -> None:
    settings.TRUSTED_PROXIES = trusted
    assert client_ip(request(remote, forwarded)) == client
