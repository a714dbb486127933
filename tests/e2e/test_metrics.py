"""GET /metrics in one process: who may read it, and counters that move by the right amounts
after known work (appends, a request, a subscriber's lag and parked streams, a saga email,
a Celery task)."""

from __future__ import annotations

import uuid

import pytest
from django.core import mail
from django.db import transaction
from django.test import Client, override_settings
from rest_framework.test import APIClient

from eventstore import reads, store, subscribers, subscriptions
from sagas import runner
from sagas.models import SagaInstance
from tests.conftest import grant, settle
from tests.e2e.helpers import assert_problem, new_user, project
from tests.events import Noted
from tests.metrics import scrape, value
from tests.processes import wait_for
from tests.testapp.models import Switch
from users.authentication import issue_token

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-test-token-0123456789"


@pytest.fixture(autouse=True)
def _metrics_token(settings) -> None:
    settings.METRICS_TOKEN = TOKEN


def staff_user(username: str = "ops", *perms: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        username=username, password="ops-pass-123", is_staff=True
    )
    return grant(user, *perms) if perms else user


class TestAccess:
    def test_anonymous_is_401_problem_with_a_bearer_challenge(self) -> None:
        response = Client().get("/metrics")
        assert_problem(response, 401)
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_a_wrong_bearer_token_is_401(self) -> None:
        response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token")
        assert_problem(response, 401)

    def test_staff_without_the_permission_is_403(self) -> None:
        client = Client()
        client.force_login(staff_user())
        assert_problem(client.get("/metrics"), 403)

    def test_staff_with_the_permission_by_session_and_by_api_token(self) -> None:
        user = staff_user("ops", "eventstore.view_metrics")
        client = Client()
        client.force_login(user)
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        _, token = issue_token(user, "prometheus")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert api.get("/metrics").status_code == 200

    def test_the_permission_without_staff_is_403(self) -> None:
        from django.contrib.auth import get_user_model

        user = grant(
            get_user_model().objects.create_user(username="nostaff", password="x-pass-123"),
            "eventstore.view_metrics",
        )
        _, token = issue_token(user, "prometheus")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert_problem(api.get("/metrics"), 403)

    def test_the_metrics_token(self) -> None:
        samples = scrape(Client(), TOKEN)
        assert value(samples, "metrics_collector_failed", collector="SubscriberCollector") == 0

    def test_no_token_configured_refuses_every_bearer(self, settings) -> None:
        settings.METRICS_TOKEN = ""
        response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ")
        assert response.status_code == 401

    def test_turned_off_it_is_404(self, settings) -> None:
        settings.METRICS_ENABLED = False
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert_problem(response, 404)


class TestCounters:
    def test_appends_count_by_category_and_type_after_commit_only(self) -> None:
        client = Client()
        before = scrape(client, TOKEN)
        for _ in range(3):
            store.append(f"note-{uuid.uuid4()}", [Noted(text="a"), Noted(text="b")])
        with transaction.atomic():
            store.append(f"note-{uuid.uuid4()}", [Noted(text="rolled back")])
            transaction.set_rollback(True)
        after = scrape(client, TOKEN)
        labels = {"category": "note", "event_type": "test.Noted"}
        moved = value(after, "eventstore_events_appended_total", **labels) - value(
            before, "eventstore_events_appended_total", **labels
        )
        assert moved == 6

    def test_a_request_counts_once_by_its_url_pattern(self, api) -> None:
        user = new_user(api)
        project()
        client = Client()
        before = scrape(client, TOKEN)
        assert api.get(f"/v1/users/{user['id']}").status_code == 200
        after = scrape(client, TOKEN)
        route = {"route": "v1/users/<str:user_id>", "method": "GET"}
        assert (
            value(after, "http_requests_total", **route, status="200")
            - value(before, "http_requests_total", **route, status="200")
            == 1
        )
        assert (
            value(after, "http_request_duration_seconds_count", **route)
            - value(before, "http_request_duration_seconds_count", **route)
            == 1
        )
        # No raw path, so no id, in any label of any series.
        assert not [key for key in after if user["id"] in str(key)]

    def test_an_unknown_path_is_one_series_whatever_the_path(self) -> None:
        client = Client()
        before = scrape(client, TOKEN)
        for n in range(3):
            client.get(f"/nowhere/{n}")
        after = scrape(client, TOKEN)
        key = {"route": "unmatched", "method": "GET", "status": "404"}
        assert (
            value(after, "http_requests_total", **key) - value(before, "http_requests_total", **key)
            == 3
        )

    def test_subscriber_lag_in_events_and_seconds_and_parked_streams(self) -> None:
        tally = subscribers.get("test-tally")
        subscriptions.catch_up(tally)  # its checkpoint exists, at the end of the feed
        for n in range(4):
            store.append(f"note-lag{n}", [Noted(text=str(n))])
        settle()
        samples = scrape(Client(), TOKEN)
        labels = {"subscriber": "test-tally", "partition": "0"}
        assert value(samples, "eventstore_subscriber_lag_events", **labels) == 4
        assert value(samples, "eventstore_subscriber_lag_seconds", **labels) > 0
        assert value(samples, "eventstore_subscriber_parked_streams", **labels) == 0

        Switch.objects.create(name="fail")
        store.append("note-boom", [Noted(text="boom")])
        settle()
        before = samples
        subscriptions.catch_up(tally)
        samples = scrape(Client(), TOKEN)

        def errors(samples: dict, kind: str) -> float:
            return value(samples, "eventstore_subscriber_errors_total", **labels, kind=kind)

        assert value(samples, "eventstore_subscriber_lag_events", **labels) == 0
        assert value(samples, "eventstore_subscriber_lag_seconds", **labels) == 0
        assert value(samples, "eventstore_subscriber_parked_streams", **labels) == 1
        # The batch failed once as a whole, then its redo parked the one stream.
        assert errors(samples, "batch") - errors(before, "batch") == 1
        assert errors(samples, "parked") - errors(before, "parked") == 1
        assert value(samples, "eventstore_subscriber_events_processed_total", **labels) == 4
        position = value(samples, "eventstore_subscriber_position", **labels)
        assert position == reads.read_stream("note-boom")[0].position

    @pytest.mark.slow
    def test_one_welcome_saga_counts_one_email_and_its_steps(self, api) -> None:
        client = Client()
        before = scrape(client, TOKEN)
        user = new_user(api)
        settle()
        subscriptions.catch_up(subscribers.get("welcome-saga"))
        instance = SagaInstance.objects.get(saga_type="welcome", correlation_key=user["id"])
        runner.run(instance.pk)
        assert len(mail.outbox) == 1
        after = scrape(client, TOKEN)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("saga_emails_sent_total") == 1
        assert moved("saga_emails_failed_total", reason="unreachable") == 0
        assert value(after, "saga_instances", saga="welcome", status="completed") == 1
        assert value(after, "saga_instances", saga="welcome", status="failed") == 0
        for step in ("welcome", "send_email"):
            labels = {"saga": "welcome", "step": step, "outcome": "done"}
            assert moved("saga_step_duration_seconds_count", **labels) == 1

    @pytest.mark.slow
    def test_celery_tasks_by_name_and_outcome(self, celery_worker) -> None:
        from eventstore.tasks import run_subscriber

        client = Client()
        before = scrape(client, TOKEN)
        run_subscriber.delay("test-tally")
        name = run_subscriber.name
        key = {"task": name, "outcome": "success"}

        def ran() -> bool:
            samples = scrape(client, TOKEN)
            return value(samples, "celery_tasks_total", **key) > value(
                before, "celery_tasks_total", **key
            )

        wait_for(ran, 30, "the worker to run the task")
        samples = scrape(client, TOKEN)
        assert value(samples, "celery_task_duration_seconds_count", task=name) >= 1
        assert value(samples, "celery_queue_length", queue="celery") == 0

    def test_postgres_connections_are_counted(self) -> None:
        samples = scrape(Client(), TOKEN)
        assert value(samples, "postgres_connections", state="active") >= 1


@override_settings(METRICS_ENABLED=False)
def test_turned_off_nothing_counts() -> None:
    from prometheus_client import REGISTRY

    labels = {"category": "note", "event_type": "test.Noted"}

    def appended() -> float:
        return REGISTRY.get_sample_value("eventstore_events_appended_total", labels) or 0.0

    before = appended()
    store.append(f"note-{uuid.uuid4()}", [Noted(text="off")])
    assert appended() == before
