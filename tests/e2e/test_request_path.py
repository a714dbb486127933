"""What a request costs, and the bounds its shortcuts keep.

GET /v1/users/{id} runs one query once the token is known; a token a process has checked
is trusted for API_TOKEN_CACHE_SECONDS at most (revocation in that process is immediate);
the rate limit costs one Redis round trip per lease of requests, never admits more than
the limit across processes, and answers DRF's 429 with Retry-After.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from redis.connection import AbstractConnection
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from config import throttling
from config.throttling import LEASE_MAX, lease_size, redis_client
from eventstore.models import Stream
from tests.conftest import grant
from tests.e2e.helpers import assert_problem, new_user, project
from tests.processes import ROOT, child_env, wait_for
from users import authentication
from users.authentication import forget_checked_tokens, issue_token
from users.models import ApiToken, EmailReservation, UserRecord
from users.serializers import UserSerializer

pytestmark = pytest.mark.django_db(transaction=True)


def token_client(user: Any) -> tuple[ApiToken, APIClient]:
    record, token = issue_token(user, "request-path")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return record, client


@pytest.fixture
def renew_on_every_use(monkeypatch) -> None:
    """Every request records the token's last use, so every request stores it anew."""
    monkeypatch.setattr(authentication, "_LAST_USED_RESOLUTION", timedelta(0))


def elsewhere(sql: str, params: list[Any]) -> None:
    """Change a row the way another process would: no signal reaches this one."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


class TestUserDetail:
    def test_one_query_once_the_token_is_known(self, api) -> None:
        user_id = new_user(api)["id"]
        project()
        assert api.get(f"/v1/users/{user_id}").status_code == 200  # checks the token
        with CaptureQueriesContext(connection) as queries:
            assert api.get(f"/v1/users/{user_id}").status_code == 200
        assert len(queries) == 1, [q["sql"] for q in queries]
        assert 'FROM "users_user"' in queries[0]["sql"]

    def test_a_token_not_yet_known_costs_one_more_query(self, api) -> None:
        user_id = new_user(api)["id"]
        project()
        forget_checked_tokens()
        with CaptureQueriesContext(connection) as queries:
            assert api.get(f"/v1/users/{user_id}").status_code == 200
        # The token with its user (one join), then the row; last_used_at is fresh.
        assert len(queries) == 2, [q["sql"] for q in queries]

    def test_the_body_is_what_the_serializer_documents(self, api) -> None:
        user_id = new_user(api, first_name="Ünïcode", last_name="O'Brien")["id"]
        project()
        # Exercise every kind of value: a welcome time with microseconds, not only null.
        UserRecord.objects.filter(id=user_id).update(
            welcomed_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        )
        response = api.get(f"/v1/users/{user_id}")
        documented = UserSerializer(UserRecord.objects.get(id=user_id)).data
        assert response.content == JSONRenderer().render(documented)
        assert list(response.json()) == list(documented)
        assert response.json()["welcomed_at"] == "2026-01-02T03:04:05.678901Z"
        assert response["ETag"] == f'"{documented["version"]}"'

    def test_line_separators_in_names_come_out_as_drf_writes_them(self, api) -> None:
        user_id = new_user(api, first_name="Line\u2028Sep", last_name="Para\u2029Sep")["id"]
        project()
        response = api.get(f"/v1/users/{user_id}")
        assert response["Content-Type"] == "application/json"
        assert b"Line\\u2028Sep" in response.content
        assert response.content == JSONRenderer().render(
            UserSerializer(UserRecord.objects.get(id=user_id)).data
        )
        assert response.json()["last_name"] == "Para\u2029Sep"

    def test_an_accept_header_with_an_indent_is_honoured(self, api) -> None:
        user_id = new_user(api)["id"]
        project()
        response = api.get(f"/v1/users/{user_id}", HTTP_ACCEPT="application/json; indent=2")
        assert response.status_code == 200
        assert response.content.startswith(b'{\n  "id": ')
        assert response.json()["id"] == user_id
        assert response["ETag"] == f'"{response.json()["version"]}"'
        refused = api.get(f"/v1/users/{user_id}", HTTP_ACCEPT="text/csv")
        assert_problem(refused, 406)

    def test_unknown_user_and_wait_for_still_validated(self, api) -> None:
        missing = "00000000-0000-0000-0000-000000000001"
        assert_problem(api.get(f"/v1/users/{missing}"), 404)
        body = assert_problem(api.get(f"/v1/users/{missing}?wait_for=0"), 400)
        assert "wait_for" in body["errors"]
        assert_problem(api.get(f"/v1/users/{missing}?bogus=1"), 400)


class TestUserCreate:
    def test_statements_of_a_create(self, api) -> None:
        new_user(api)  # checks the token
        with CaptureQueriesContext(connection) as queries:
            new_user(api)
        # Django's cursor sees all but the append and the user's key (psycopg cursors of
        # their own, after BEGIN). None takes a savepoint: the new event's id cannot be
        # stored yet, so the append is no re-send to tell from a conflict, and an email
        # clash aborts the whole command.
        statements = [q["sql"].split()[0].upper() for q in queries]
        assert statements == ["BEGIN", "INSERT", "COMMIT"], [q["sql"] for q in queries]
        assert '"users_email_reservation"' in queries[1]["sql"]

    def test_a_create_wakes_both_subscribers_once(self, api, wake_sends) -> None:
        from tests.integration.test_celery_wakeups import broker_tasks

        new_user(api)
        assert wake_sends == [["users"], ["welcome-saga"]]
        new_user(api)  # both wake-ups still queued: the marks are asked for, nothing queued
        assert wake_sends == [["users"], ["welcome-saga"]] * 2
        assert sorted(broker_tasks()) == [
            ("eventstore.tasks.run_subscriber", "('users',)"),
            ("eventstore.tasks.run_subscriber", "('welcome-saga',)"),
        ]

    def test_a_taken_email_rolls_the_whole_command_back(self, api) -> None:
        first = new_user(api, email="taken@example.org")
        response = api.post(
            "/v1/users",
            {"email": "Taken@Example.org", "first_name": "Other", "last_name": "User"},
            format="json",
        )
        assert_problem(response, 409)
        assert Stream.objects.filter(category="user").count() == 1
        assert EmailReservation.objects.get().user_id == uuid.UUID(first["id"])


class TestTokenRevocation:
    def test_deleted_here_stops_at_once(self, client_user) -> None:
        _, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        ApiToken.objects.filter(user=client_user).delete()  # signals, even in bulk
        assert_problem(client.get("/v1/users"), 401)

    def test_deleted_elsewhere_stops_within_the_cache_time(self, client_user, settings) -> None:
        settings.API_TOKEN_CACHE_SECONDS = 0.5
        record, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        elsewhere("DELETE FROM users_api_token WHERE id = %s", [record.pk])
        started = time.monotonic()
        # Within the bound this process may still trust it (that is the documented cost)...
        while client.get("/v1/users").status_code == 200:
            assert time.monotonic() - started < 0.5 + 1.0, "trusted past the bound"
            time.sleep(0.05)
        # ...and after it, never.
        assert_problem(client.get("/v1/users"), 401)

    def test_user_deactivated_elsewhere_stops_within_the_cache_time(
        self, client_user, settings
    ) -> None:
        settings.API_TOKEN_CACHE_SECONDS = 0.5
        _, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        elsewhere("UPDATE auth_user SET is_active = false WHERE id = %s", [client_user.pk])
        time.sleep(0.6)
        assert_problem(client.get("/v1/users"), 401)

    def test_no_cache_when_the_time_is_zero(self, client_user, settings) -> None:
        settings.API_TOKEN_CACHE_SECONDS = 0
        record, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        elsewhere("DELETE FROM users_api_token WHERE id = %s", [record.pk])
        assert_problem(client.get("/v1/users"), 401)

    def test_recording_last_use_notices_a_deletion_elsewhere(
        self, client_user, renew_on_every_use
    ) -> None:
        record, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        record.refresh_from_db()
        assert record.last_used_at is not None
        elsewhere("DELETE FROM users_api_token WHERE id = %s", [record.pk])
        assert_problem(client.get("/v1/users"), 401)

    def test_staff_rights_come_from_the_cached_user(self, transactional_db) -> None:
        users = get_user_model().objects
        _, plain = token_client(users.create_user(username="p", password="p-pass-1234"))
        viewer = grant(
            users.create_user(username="s", password="s-pass-1234", is_staff=True),
            "eventstore.view_event",
        )
        _, staff = token_client(viewer)
        for _ in range(2):  # the second time from the cache
            assert plain.get("/v1/events").status_code == 403
            assert staff.get("/v1/events").status_code == 200


class TestCheckedTokens:
    """The per-process table of checked tokens stays bounded and keeps the busiest."""

    def test_the_table_is_bounded(self, client_user, monkeypatch) -> None:
        monkeypatch.setattr(authentication, "MAX_CHECKED_TOKENS", 3)
        forget_checked_tokens()
        hashes = []
        for _ in range(5):
            record, client = token_client(client_user)
            assert client.get("/v1/users").status_code == 200
            hashes.append(record.key_hash)
        assert list(authentication._checked_tokens) == hashes[-3:]

    def test_a_token_looked_up_again_counts_as_the_newest(
        self, client_user, monkeypatch, renew_on_every_use
    ) -> None:
        monkeypatch.setattr(authentication, "MAX_CHECKED_TOKENS", 3)
        forget_checked_tokens()
        tokens = [token_client(client_user) for _ in range(4)]
        for index in (0, 1, 0, 2, 3):  # the fourth token pushes the least recent out
            assert tokens[index][1].get("/v1/users").status_code == 200
        assert list(authentication._checked_tokens) == [
            tokens[index][0].key_hash for index in (0, 2, 3)
        ]

    def test_a_renewal_leaves_the_record_other_requests_hold_alone(
        self, client_user, renew_on_every_use
    ) -> None:
        record, client = token_client(client_user)
        assert client.get("/v1/users").status_code == 200
        held = authentication._checked_tokens[record.key_hash][1]
        seen = held.last_used_at
        assert client.get("/v1/users").status_code == 200
        renewed = authentication._checked_tokens[record.key_hash][1]
        assert renewed is not held
        assert renewed.last_used_at > seen
        assert held.last_used_at == seen


class Racer(throttling.UserRateThrottle):
    """One client's limit, checked outside any request by the racing tests below."""

    rate = "1000/min"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return "throttle_window_user_racer"


# A process of its own racing for Racer's window; prints what it admitted.
RACING_PROCESS = """
import json, sys, time
import django
django.setup()
from django.core.cache import cache
from config import throttling
from tests.e2e.test_request_path import Racer

go, attempts = sys.argv[1], int(sys.argv[2])
round_trips = 0
reserve = throttling._RESERVE

def counted(*args, **kwargs):
    global round_trips
    round_trips += 1
    return reserve(*args, **kwargs)

throttling._RESERVE = counted
client = throttling.redis_client(cache)
print("ready", flush=True)
while not client.exists(go):
    time.sleep(0.001)
first = time.monotonic()
admitted = 0
for _ in range(attempts):
    admitted += Racer().allow_request(None, None)
    time.sleep(0.0005)  # spread the attempts, so that the processes overlap
last = time.monotonic()
print(json.dumps({"admitted": admitted, "round_trips": round_trips, "first": first, "last": last}))
"""


class TestThrottle:
    @pytest.fixture
    def rate(self, monkeypatch) -> Any:
        """Set the limit: ``rate(2, 3)`` allows 2 requests per 3-second window."""

        def set_rate(requests: int, seconds: int) -> None:
            monkeypatch.setattr(UserRateThrottle, "parse_rate", lambda self, _: (requests, seconds))

        return set_rate

    def test_one_redis_round_trip_per_lease(self, api, rate, monkeypatch) -> None:
        rate(6000, 60)  # the default: leases of LEASE_MAX for two-thirds of a window
        assert api.get("/v1/users").status_code == 200  # reserves the window's first lease
        sent: list[bytes] = []
        original = AbstractConnection.send_packed_command

        def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
            sent.append(command if isinstance(command, bytes) else b"".join(map(bytes, command)))
            return original(self, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        for _ in range(2 * LEASE_MAX):
            assert api.get("/v1/users").status_code == 200
        # The first lease served LEASE_MAX requests; two more leases serve the rest, one
        # script call (INCRBY and PTTL at once) each.
        assert len(sent) == 2, sent
        assert all(b"EVALSHA" in c for c in sent), sent

    @pytest.mark.slow
    def test_leases_are_reserved_in_the_counter_and_end_with_the_window(
        self, api, client_user, rate
    ) -> None:
        rate(200, 3)  # a lease of 200 // 64 = 3 requests
        key = cache.make_and_validate_key(f"throttle_window_user_{client_user.pk}")
        client = redis_client(cache)
        assert api.get("/v1/users").status_code == 200
        assert int(client.get(key)) == 3
        assert 0 < client.pttl(key) <= 3000
        assert [api.get("/v1/users").status_code for _ in range(2)] == [200, 200]
        assert int(client.get(key)) == 3  # served from the lease
        assert api.get("/v1/users").status_code == 200
        assert int(client.get(key)) == 6  # the next lease
        wait_for(lambda: not client.exists(key), 5, "the window to end")
        # Two requests of the lease are left, but their window is over: ask Redis again.
        assert api.get("/v1/users").status_code == 200
        assert int(client.get(key)) == 3

    @pytest.mark.slow
    def test_processes_racing_for_one_window_never_exceed_the_limit(self) -> None:
        limit, processes, attempts = Racer().num_requests, 3, 600
        go = f"throttle-race-go-{uuid.uuid4()}"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", RACING_PROCESS, go, str(attempts)],
                cwd=ROOT,
                env=child_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        try:
            for child in children:
                assert child.stdout.readline().strip() == "ready"
            redis_client(cache).set(go, 1)
            results = [json.loads(child.communicate(timeout=60)[0]) for child in children]
        finally:
            for child in children:
                child.kill()
        # They raced: every process was still trying when every other had started.
        assert max(r["first"] for r in results) < min(r["last"] for r in results), results
        admitted = sum(r["admitted"] for r in results)
        # Never more than the limit; less only by what the others held unused when the
        # window ran out (less than one lease each).
        assert limit - processes * lease_size(limit, 0) <= admitted <= limit, results
        # Each refusal asks Redis; the admissions took far fewer round trips than requests.
        refused = processes * attempts - admitted
        assert sum(r["round_trips"] for r in results) - refused < admitted / 3, results

    def test_threads_of_one_process_admit_exactly_the_limit(self, threads, monkeypatch) -> None:
        """Threads reserving at once add their leases together: none is lost."""
        reserve = throttling._RESERVE

        def slow_reserve(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.002)  # a slow round trip: threads pile up reserving at once
            return reserve(*args, **kwargs)

        monkeypatch.setattr(throttling, "_RESERVE", slow_reserve)

        def attempt(_: int) -> int:
            admitted = 0
            for _ in range(300):
                admitted += Racer().allow_request(None, None)
                time.sleep(0.0005)  # let the other threads in between
            return admitted

        results = threads(8, attempt)
        assert sum(results) == Racer().num_requests, results

    @pytest.mark.slow
    def test_429_with_retry_after_then_a_new_window(self, api, rate) -> None:
        rate(2, 3)
        started = time.monotonic()
        assert [api.get("/v1/users").status_code for _ in range(3)] == [200, 200, 429]
        response = api.get("/v1/users")
        assert_problem(response, 429)
        assert 0 < int(response["Retry-After"]) <= 3
        time.sleep(max(0.0, 3.1 - (time.monotonic() - started)))
        assert api.get("/v1/users").status_code == 200

    @pytest.mark.slow
    def test_refused_requests_do_not_stretch_the_window(self, api, rate) -> None:
        rate(1, 2)
        started = time.monotonic()
        assert api.get("/v1/users").status_code == 200
        while api.get("/v1/users").status_code == 429:
            assert time.monotonic() - started < 2 + 1.0, "refusals moved the window's end"
            time.sleep(0.05)

    def test_per_client(self, api, client_user, rate) -> None:
        rate(2, 60)
        other = get_user_model().objects.create_user(username="other", password="o-pass-1234")
        _, other_client = token_client(other)
        assert [api.get("/v1/users").status_code for _ in range(3)] == [200, 200, 429]
        assert other_client.get("/v1/users").status_code == 200
        retry_after = int(api.get("/v1/users")["Retry-After"])
        assert 0 < retry_after <= 60

    def test_a_counter_left_without_expiry_heals(self, api, client_user, rate) -> None:
        rate(5, 60)
        key = cache.make_and_validate_key(f"throttle_window_user_{client_user.pk}")
        client = redis_client(cache)
        client.set(key, 100)  # as if a process died between INCR and PEXPIRE
        response = api.get("/v1/users")
        assert_problem(response, 429)
        assert 0 < int(response["Retry-After"]) <= 60
        assert 0 < client.pttl(key) <= 60_000

    def test_the_counter_is_an_integer_with_an_expiry(self, api, client_user, rate) -> None:
        rate(6000, 60)
        api.get("/v1/users")
        api.get("/v1/users")
        key = cache.make_and_validate_key(f"throttle_window_user_{client_user.pk}")
        client = redis_client(cache)
        assert int(client.get(key)) == LEASE_MAX  # one lease reserved
        assert 0 < client.pttl(key) <= 60_000
        # Nothing of DRF's timestamp list is written any more.
        assert not client.exists(cache.make_and_validate_key(f"throttle_user_{client_user.pk}"))
