"""Saga steps on real Celery worker processes against a real (slow) SMTP relay."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from sagas import dispatch
from sagas.models import SagaInstance
from tests.processes import Child, celery_beat, celery_worker, child_env, wait_for
from tests.smtp import SmtpRelay
from users import handlers
from users.commands import CreateUser

pytestmark = pytest.mark.django_db(transaction=True)


def create_users(count: int, prefix: str = "w") -> list[str]:
    addresses = [f"{prefix}{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(count)]
    for address in addresses:
        handlers.handle(CreateUser(email=address, first_name="Wil", last_name="Come"))
    return addresses


def statuses() -> Counter:
    return Counter(SagaInstance.objects.values_list("status", flat=True))


@pytest.fixture
def relay():
    server = SmtpRelay(delay=0.3)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def processes(tmp_path: Path):
    """Start worker processes (and beat) for a test; all are stopped after it."""
    started: list[Child] = []

    def start(kind: str, env: dict[str, str], **options) -> Child:
        log = tmp_path / f"{kind}-{len(started)}.log"
        child = (
            celery_beat(env, log, tmp_path / "beat-schedule")
            if kind == "beat"
            else celery_worker(env, log, **options)
        )
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.mark.slow
def test_sends_of_different_instances_overlap_on_the_mail_pool(relay, processes) -> None:
    env = child_env(**relay.settings())
    processes("worker", env, concurrency=2, queues="celery", name="subscribers")
    processes("worker", env, concurrency=4, queues=settings.MAIL_QUEUE, pool="threads", name="mail")
    addresses = create_users(6)
    wait_for(lambda: statuses()["completed"] == 6, 60, "six welcomes")
    received = relay.received
    assert sorted(r.recipients[0] for r in received) == sorted(addresses)
    spans = sorted((r.started, r.finished) for r in received)
    overlapping = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    assert overlapping >= 1, spans  # one relay delay each, and yet not one after another


@pytest.mark.slow
def test_one_email_per_user_under_racing_workers_and_redelivered_tasks(relay, processes) -> None:
    env = child_env(**relay.settings())
    for name in ("a", "b"):
        processes("worker", env, concurrency=3, pool="threads", name=name)
    addresses = create_users(10)
    wait_for(lambda: SagaInstance.objects.count() == 10, 60, "ten instances")
    task = dispatch._task("welcome")
    for _ in range(3):  # redeliveries and duplicates, while the first tasks run
        for pk in SagaInstance.objects.values_list("pk", flat=True):
            task.apply_async((pk,))
    wait_for(lambda: statuses()["completed"] == 10, 60, "ten welcomes")
    wait_for(_queue_empty, 30, "the duplicates to be taken (they find their instance done)")
    counts = Counter(r.recipients[0] for r in relay.received)
    assert counts == Counter(addresses)


def _queue_empty() -> bool:
    from tests.integration.test_celery_wakeups import broker_headers

    return not broker_headers(settings.MAIL_QUEUE) and not broker_headers()


@pytest.mark.slow
def test_relay_down_then_up_sends_every_pending_email_once_without_a_storm(
    relay, processes
) -> None:
    relay.stop()
    env = child_env(**relay.settings(), SUBSCRIBER_SAFETY_NET_SECONDS="1")
    processes("worker", env, concurrency=8, pool="threads", name="mail")
    processes("beat", env)
    addresses = create_users(10)
    wait_for(
        lambda: SagaInstance.objects.filter(last_error__contains="RelayDown").exists(),
        60,
        "a send to fail on the relay being down",
    )
    time.sleep(8)  # the outage lasts a while: the scenario, not a wait for a condition
    pending = SagaInstance.objects.filter(status__in=SagaInstance.OPEN)
    assert pending.count() == 10
    # One probe per breaker span (1, 2, 4, ... s) and the sends already in flight when it
    # opened; not a try per instance per backoff.
    tries = sum(pending.values_list("attempts", flat=True))
    assert tries <= 8 + 5, tries

    relay.start()
    wait_for(lambda: statuses()["completed"] == 10, 90, "every pending email")
    assert Counter(r.recipients[0] for r in relay.received) == Counter(addresses)


@pytest.mark.slow
def test_a_permanent_refusal_fails_the_instance_with_the_relay_reply(relay, processes) -> None:
    relay.refuse("nobody@example.com")
    env = child_env(**relay.settings())
    processes("worker", env, concurrency=2, pool="threads", name="mail")
    handlers.handle(CreateUser(email="nobody@example.com", first_name="No", last_name="Body"))
    wait_for(lambda: statuses()["failed"] == 1, 60, "the refused welcome to fail")
    instance = SagaInstance.objects.get()
    assert instance.attempts == 1  # given up at once, not retried
    assert "550" in instance.last_error
    assert "mailbox unavailable" in instance.last_error
    out = StringIO()
    call_command("sagas", "list", "--status", "failed", stdout=out)
    assert "550 5.1.1 mailbox unavailable" in out.getvalue()
    assert relay.received == []


@pytest.mark.slow
def test_a_worker_killed_mid_send_sends_once_after_the_sweep_requeues_it(
    tmp_path, processes
) -> None:
    from tests.testapp.models import Switch

    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = child_env(
        EMAIL_BACKEND="tests.testapp.mail.HangingBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
    )
    Switch.objects.create(name="hang-on-email")
    worker = processes("worker", env, concurrency=2, pool="threads")
    handlers.handle(CreateUser(email="crash@example.com", first_name="Cr", last_name="Ash"))
    wait_for((mail_dir / "sending.marker").exists, 60, "the email step to start")
    worker.kill()  # SIGKILL to the whole worker, mid-send
    instance = SagaInstance.objects.get()
    assert (instance.status, instance.step) == ("started", "send_email")
    Switch.objects.all().delete()

    processes("worker", env, concurrency=2, pool="threads")
    processes("beat", env)
    wait_for(lambda: statuses()["completed"] == 1, 90, "the sweep to requeue the lost step")
    sent = list(mail_dir.glob("*.log"))
    assert len(sent) == 1
    assert "crash@example.com" in sent[0].read_text()
