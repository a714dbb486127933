"""Logs, correlation and traces across real processes: gunicorn, Celery workers, beat.

A signup sent with an ``X-Correlation-ID`` is followed through the JSON lines of the web
and the worker and through the spans both export (tests/tracing.py writes them to files,
one per process); an idle service writes nothing at INFO.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model

from config.celery import app
from eventstore.models import Event
from sagas.models import SagaInstance
from tests.faults import Gunicorn
from tests.processes import Child, celery_beat, celery_worker, child_env, wait_for
from tests.tracing import read_spans
from users.authentication import issue_token

pytestmark = pytest.mark.django_db(transaction=True)


def json_lines(child: Child) -> list[dict]:
    """The JSON log lines of a process (it may print other things: banners, the console
    email backend's messages)."""
    found = []
    for line in child.output().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.fixture
def started(tmp_path: Path):
    children: list[Child] = []

    def track(child: Child) -> Child:
        children.append(child)
        return child

    yield track
    for child in children:
        child.stop()


@pytest.mark.slow
def test_a_signup_followed_by_its_correlation_id_through_logs_and_traces(
    tmp_path: Path, started
) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    env = child_env(
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend",
        TEST_TRACING_EXPORTER="tests.tracing.file_exporter",
        TEST_TRACE_DIR=str(traces),
        OTEL_BSP_SCHEDULE_DELAY="50",  # export within moments, not the default seconds
        # The feed's horizon is cluster-wide: a transaction of another database on this
        # server can hold the first wake-up back; the safety net then delivers, as it would.
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
    )
    _, token = issue_token(get_user_model().objects.create_user(username="client"), "tests")
    web = started(Gunicorn(env, tmp_path / "web.log", workers=1))
    worker = started(celery_worker(env, tmp_path / "worker.log", concurrency=2))
    started(celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule"))

    correlation = str(uuid.uuid4())
    response = requests.post(
        f"{web.url}/v1/users",
        json={"email": "follow.me@example.com", "first_name": "Fol", "last_name": "Low"},
        headers={
            "Authorization": f"Bearer {token}",
            "X-Correlation-ID": correlation,
            "X-Request-ID": "signup-1",
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Correlation-ID"] == correlation
    assert response.headers["X-Request-ID"] == "signup-1"
    user_id = response.json()["id"]

    wait_for(
        lambda: SagaInstance.objects.filter(status="completed").exists(), 60, "the welcome email"
    )
    # The saga's events carry the request's correlation id, and point at their cause.
    events = list(Event.objects.filter(stream_id=f"user-{user_id}").order_by("version"))
    assert [e.event_type for e in events] == ["UserCreated", "UserWelcomed"]
    assert {e.metadata["correlation_id"] for e in events} == {correlation}
    assert events[1].metadata["causation_id"] == str(events[0].event_id)
    assert all("traceparent" in e.metadata for e in events)

    # The logs: the web's request line, then the worker's lines for the same conversation.
    def worker_messages() -> list[str]:
        return [
            line["message"]
            for line in json_lines(worker)
            if line.get("correlation_id") == correlation
            or correlation in line.get("correlation_ids", [])
        ]

    wait_for(lambda: "email sent" in worker_messages(), 30, "the email's log line")
    messages = worker_messages()
    assert messages.count("saga step") == 2, messages  # welcome, then send_email
    assert "subscriber batch" in messages
    requests_logged = [
        line
        for line in json_lines(web)
        if line["logger"] == "config.requests" and line["request_id"] == "signup-1"
    ]
    assert len(requests_logged) == 1
    assert requests_logged[0]["correlation_id"] == correlation
    assert (requests_logged[0]["status"], requests_logged[0]["route"]) == (201, "/v1/users")
    sent = next(line for line in json_lines(worker) if line["message"] == "email sent")
    assert (sent["user_id"], sent["template"]) == (user_id, "sagas/welcome_email")
    assert sent["level"] == "info"
    # The console backend's message is printed as is, not logged as WARNING lines.
    assert not [line for line in json_lines(worker) if line["level"] in ("warning", "error")]
    assert "WARNING" not in worker.output()

    # The trace: request -> append -> subscriber batch -> saga step -> email send.
    def trace_of_request() -> list[dict]:
        spans = read_spans(traces)
        roots = [s for s in spans if s["name"].startswith("POST")]
        if not roots:
            return []
        return [s for s in spans if s["trace_id"] == roots[0]["trace_id"]]

    expected = {"subscriber users", "subscriber welcome-saga", "saga step welcome.welcome",
                "saga step welcome.send_email", "email send"}  # fmt: skip
    wait_for(
        lambda: expected <= {s["name"] for s in trace_of_request()},
        30,
        f"the spans {expected} in the request's trace",
    )
    spans = trace_of_request()
    names = {s["name"] for s in spans}
    assert "INSERT" in names  # the append, by the psycopg instrumentation
    by_id = {s["span_id"]: s for s in spans}
    send = next(s for s in spans if s["name"] == "email send")
    assert by_id[send["parent_id"]]["name"] == "saga step welcome.send_email"
    assert len({s["pid"] for s in spans}) >= 2  # the web's spans and the worker's


def celery_totals() -> dict[str, int]:
    """Tasks each worker accepted so far, by name, summed over workers."""
    totals: dict[str, int] = {}
    for stats in (app.control.inspect(timeout=1.0).stats() or {}).values():
        for name, count in stats.get("total", {}).items():
            totals[name] = totals.get(name, 0) + count
    return totals


@pytest.mark.slow
def test_an_idle_service_writes_nothing_at_info(tmp_path: Path, started) -> None:
    env = child_env(LOG_FORMAT="json", LOG_LEVEL="INFO", SUBSCRIBER_SAFETY_NET_SECONDS="0.3")
    worker = started(celery_worker(env, tmp_path / "worker.log", concurrency=1))
    beat = started(celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule"))
    wake, sweep = "eventstore.tasks.wake_all_subscribers", "sagas.tasks.sweep_due_sagas"

    # Drained: no events, and the safety net's first rounds (and the subscriber runs they
    # queue) are done; one task at a time, so a later task accepted means earlier ones ended.
    wait_for(lambda: celery_totals().get(wake, 0) >= 2, 60, "the safety net's first rounds")
    before = celery_totals()
    sizes = (len(worker.output()), len(beat.output()))
    wait_for(
        lambda: (
            (now := celery_totals()).get(wake, 0) >= before[wake] + 3
            and now.get(sweep, 0) >= before.get(sweep, 0) + 3
        ),
        60,
        "three more rounds of the safety net and the saga sweep",
    )
    assert celery_totals().get("eventstore.tasks.run_subscriber", 0) > before.get(
        "eventstore.tasks.run_subscriber", 0
    )
    assert worker.output()[sizes[0] :] == ""
    assert beat.output()[sizes[1] :] == ""
