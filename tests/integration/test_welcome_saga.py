"""The welcome saga in one process: steps, retries, races, the right recipient, once."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from eventstore import reads, subscribers, subscriptions
from eventstore.models import Event
from sagas import dispatch, registry, runner, welcome
from sagas import mail as saga_mail
from sagas.models import MailCooldown, SagaInstance
from tests.conftest import settle
from tests.integration.test_celery_wakeups import broker_headers
from tests.testapp.mail import FlakyBackend, XidProbeBackend
from users import handlers
from users.commands import CreateUser, DeleteUser, UpdateUser

pytestmark = pytest.mark.django_db(transaction=True)


def create_user(email: str | None = None, first_name: str = "Wil") -> uuid.UUID:
    result = handlers.handle(
        CreateUser(
            email=email or f"w{uuid.uuid4().hex[:8]}@example.com",
            first_name=first_name,
            last_name="Come",
        )
    )
    return result.user.id


def run_saga_subscriber() -> None:
    settle()
    subscriptions.catch_up(subscribers.get("welcome-saga"))


def instance_for(user_id: uuid.UUID) -> SagaInstance:
    return SagaInstance.objects.get(saga_type="welcome", correlation_key=str(user_id))


def run(user_id: uuid.UUID) -> str:
    return runner.run(instance_for(user_id).pk)


def run_one_step(user_id: uuid.UUID) -> str:
    return runner.run(instance_for(user_id).pk, max_steps=1)


def welcomes(user_id: uuid.UUID) -> int:
    return Event.objects.filter(stream_id=f"user-{user_id}", event_type="UserWelcomed").count()


def queued_steps(*, delayed: bool | None = None) -> list[dict]:
    from django.conf import settings

    return [
        h
        for h in broker_headers(settings.MAIL_QUEUE)
        if h["task"] == dispatch.RUN_STEP_TASK and (delayed is None or bool(h["eta"]) == delayed)
    ]


@pytest.mark.slow
def test_the_worker_welcomes_a_new_user_once_and_keeps_no_personal_data(celery_worker) -> None:
    from tests.processes import wait_for

    user_id = create_user("hello@example.com", first_name="Ada")
    wait_for(lambda: SagaInstance.objects.filter(status="completed").count() == 1, 30, "saga")
    instance = instance_for(user_id)
    assert instance.step == "done"
    assert welcomes(user_id) == 1
    assert [m.to for m in mail.outbox] == [["hello@example.com"]]
    assert "Ada" in mail.outbox[0].body
    assert mail.outbox[0].alternatives[0][1] == "text/html"
    assert instance.issued_commands == [str(welcome.welcome_command_id(instance))]
    assert instance.data["template"] == welcome.TEMPLATE
    stored = str(SagaInstance.objects.filter(pk=instance.pk).values().get())
    assert "hello@example.com" not in stored
    assert "Ada" not in stored
    assert "hello@example.com" not in str(list(MailCooldown.objects.values()))


def test_deleted_before_the_delay_is_cancelled(settings) -> None:
    settings.WELCOME_DELAY_SECONDS = 30
    user_id = create_user()
    run_saga_subscriber()
    assert (instance_for(user_id).status, instance_for(user_id).step) == ("waiting", "welcome")
    assert run(user_id) == "not due"
    handlers.handle(DeleteUser(user_id=user_id))
    run_saga_subscriber()
    assert instance_for(user_id).status == "cancelled"
    SagaInstance.objects.filter(pk=instance_for(user_id).pk).update(next_attempt_at=timezone.now())
    assert run(user_id) == "already cancelled"
    assert welcomes(user_id) == 0
    assert mail.outbox == []


def test_deleted_after_the_welcome_and_before_the_email_gets_none() -> None:
    user_id = create_user()
    run_saga_subscriber()
    assert run_one_step(user_id) == "send_email"  # welcomed; the email is next
    assert welcomes(user_id) == 1
    handlers.handle(DeleteUser(user_id=user_id))  # the saga's subscriber has not seen it
    assert run(user_id) == "already cancelled"
    assert instance_for(user_id).status == "cancelled"
    assert "deleted" in instance_for(user_id).last_error
    assert mail.outbox == []


def test_the_subscriber_cancels_an_instance_waiting_for_its_email() -> None:
    user_id = create_user()
    run_saga_subscriber()
    assert run_one_step(user_id) == "send_email"
    handlers.handle(DeleteUser(user_id=user_id))
    run_saga_subscriber()
    assert instance_for(user_id).status == "cancelled"
    assert run(user_id) == "already cancelled"
    assert mail.outbox == []


def test_the_email_goes_to_the_address_the_user_has_when_it_is_sent() -> None:
    user_id = create_user("old@example.com", first_name="Old")
    run_saga_subscriber()
    assert run_one_step(user_id) == "send_email"
    handlers.handle(UpdateUser(user_id=user_id, email="new@example.com", first_name="New"))
    assert run(user_id) == "done"
    assert [m.to for m in mail.outbox] == [["new@example.com"]]
    assert "New" in mail.outbox[0].body


def test_one_welcome_per_address_within_the_cooldown_whatever_is_created_and_deleted(
    settings,
) -> None:
    address = "stranger@example.com"
    for _ in range(3):  # create, welcome, delete, create again...
        user_id = create_user(address)
        run_saga_subscriber()
        assert run(user_id) == "done"
        handlers.handle(DeleteUser(user_id=user_id))
    assert [m.to for m in mail.outbox] == [[address]]
    skipped = SagaInstance.objects.filter(data__has_key="email_skipped")
    assert skipped.count() == 2
    assert set(skipped.values_list("status", flat=True)) == {"completed"}

    settings.WELCOME_EMAIL_COOLDOWN_SECONDS = 0
    user_id = create_user(address)
    run_saga_subscriber()
    assert run(user_id) == "done"
    assert len(mail.outbox) == 2


def test_racing_runs_welcome_and_mail_once(threads) -> None:
    user_id = create_user()
    created = reads.read_stream(f"user-{user_id}")[0]
    run_saga_subscriber()
    subscribers.get("welcome-saga").handle_batch([created])  # a redelivery
    assert SagaInstance.objects.filter(correlation_key=str(user_id)).count() == 1
    instance_id = instance_for(user_id).pk
    outcomes = threads(8, lambda i: runner.run(instance_id))
    assert welcomes(user_id) == 1
    assert len(mail.outbox) == 1
    assert instance_for(user_id).status == "completed"
    assert "done" in outcomes
    assert set(outcomes) <= {"done", "busy", "already completed"}


def test_a_temporary_failure_is_retried_with_backoff_and_the_breaker_holds_others(
    settings,
) -> None:
    settings.EMAIL_BACKEND = "tests.testapp.mail.FlakyBackend"
    FlakyBackend.failures_left = 2
    user_id, other = create_user(), create_user()
    run_saga_subscriber()
    for attempt in (1, 2):
        assert run(user_id) == "failed attempt"
        instance = instance_for(user_id)
        assert (instance.attempts, instance.step) == (attempt, "send_email")
        assert "ConnectionRefusedError" in instance.last_error
        assert instance.next_attempt_at > timezone.now()
        assert run(user_id) == "not due"  # backing off
        # The relay is down: other sends wait for the breaker without trying or counting.
        assert saga_mail.breaker_wait() > 0
        SagaInstance.objects.filter(pk=instance_for(other).pk).update(
            next_attempt_at=timezone.now()
        )
        assert run(other) == "postponed"
        assert instance_for(other).attempts == 0
        assert instance_for(other).next_attempt_at > timezone.now()
        saga_mail._close_breaker()  # as if its span were over
        SagaInstance.objects.filter(pk=instance.pk).update(next_attempt_at=timezone.now())
    assert FlakyBackend.failures_left == 0  # only the probes reached the relay
    assert run(user_id) == "done"
    instance = instance_for(user_id)
    assert (instance.status, instance.attempts) == ("completed", 2)
    assert len(mail.outbox) == 1
    assert welcomes(user_id) == 1


def test_causation_and_correlation_along_the_chain() -> None:
    from eventstore.context import message_context

    correlation, command = uuid.uuid4(), uuid.uuid4()
    with message_context(actor="user:alice", correlation_id=correlation, command_id=command):
        user_id = create_user()
    run_saga_subscriber()
    assert run(user_id) == "done"
    created, welcomed = reads.read_stream(f"user-{user_id}")
    assert created.metadata["correlation_id"] == str(correlation)
    assert created.metadata["causation_id"] == str(command)
    assert welcomed.event_type == "UserWelcomed"
    assert welcomed.metadata["correlation_id"] == str(correlation)
    assert welcomed.metadata["causation_id"] == str(created.event_id)
    assert welcomed.metadata["actor"] == "saga:welcome"
    assert welcomed.metadata["command_id"] == instance_for(user_id).issued_commands[0]


def test_operator_retry_and_cancel_and_the_sagas_command(settings) -> None:
    settings.EMAIL_BACKEND = "tests.testapp.mail.FlakyBackend"
    FlakyBackend.failures_left = 100
    user_id = create_user()
    run_saga_subscriber()
    assert run_one_step(user_id) == "send_email"
    instance = instance_for(user_id)
    SagaInstance.objects.filter(pk=instance.pk).update(
        attempts=registry.get("welcome").max_attempts - 1
    )
    assert run(user_id) == "failed"
    assert instance_for(user_id).status == "failed"
    out = StringIO()
    call_command("sagas", "list", "--status", "failed", stdout=out)
    assert str(user_id) in out.getvalue()
    assert "ConnectionRefusedError" in out.getvalue()

    FlakyBackend.failures_left = 0
    saga_mail._close_breaker()  # the relay is back
    call_command("sagas", "retry", str(instance.pk), stdout=StringIO())
    assert run(user_id) == "done"
    assert len(mail.outbox) == 1
    with pytest.raises(CommandError, match="cannot be cancelled"):
        call_command("sagas", "cancel", str(instance.pk))
    with pytest.raises(CommandError, match="no saga instance"):
        call_command("sagas", "cancel", "999999")

    settings.WELCOME_DELAY_SECONDS = 60
    waiting = create_user()
    run_saga_subscriber()
    call_command("sagas", "cancel", str(instance_for(waiting).pk), stdout=StringIO())
    assert instance_for(waiting).status == "cancelled"
    with pytest.raises(CommandError, match="cancelled"):
        call_command("sagas", "retry", str(instance_for(waiting).pk))


def test_the_send_holds_no_transaction_id(settings) -> None:
    """A slow relay must not hold back the subscribers' horizon."""
    settings.EMAIL_BACKEND = "tests.testapp.mail.XidProbeBackend"
    XidProbeBackend.seen = []
    users = [create_user() for _ in range(3)]
    run_saga_subscriber()
    assert [run(u) for u in users] == ["done"] * 3
    assert XidProbeBackend.seen == [None] * 3


def test_new_instances_are_queued_on_the_mail_queue_for_their_time(settings) -> None:
    from django.core.cache import cache

    settings.WELCOME_DELAY_SECONDS = 5
    cache.clear()  # the broker's queues and the marks live in the same Redis database
    first, second = create_user(), create_user()
    run_saga_subscriber()
    queued = queued_steps(delayed=True)
    assert sorted(h["argsrepr"] for h in queued) == sorted(
        f"({instance_for(u).pk},)" for u in (first, second)
    )
    run_saga_subscriber()  # nothing new: nothing queued again
    assert dispatch.sweep() == 0  # both are queued already
    assert len(queued_steps()) == 2

    cache.clear()  # the tasks are lost (a worker died holding them), and their marks expire
    assert dispatch.sweep() == 2  # the safety net queues them again
    assert len(queued_steps(delayed=True)) == 2


def test_steps_due_far_ahead_wait_for_the_sweep(settings) -> None:
    from django.core.cache import cache

    settings.WELCOME_DELAY_SECONDS = 3600
    cache.clear()
    user_id = create_user()
    run_saga_subscriber()
    assert queued_steps() == []  # not held by the broker for an hour
    assert dispatch.sweep() == 0
    SagaInstance.objects.filter(pk=instance_for(user_id).pk).update(
        next_attempt_at=timezone.now() + timedelta(seconds=10)
    )
    assert dispatch.sweep() == 1
    assert len(queued_steps(delayed=True)) == 1


def test_a_busy_instance_is_looked_at_again_later(threads) -> None:
    from django.core.cache import cache

    user_id = create_user()
    run_saga_subscriber()
    cache.clear()
    instance_id = instance_for(user_id).pk
    locked, done = threading.Event(), threading.Event()

    def hold_or_run(i: int) -> str:
        if i == 0:
            with runner.instance_lock(instance_id):  # another run holds it
                locked.set()
                done.wait(30)
            return "held"
        locked.wait(30)
        try:
            return runner.run(instance_id)
        finally:
            done.set()

    assert threads(2, hold_or_run) == ["held", "busy"]
    later = queued_steps(delayed=True)
    assert [h["argsrepr"] for h in later] == [f"({instance_id},)"]
    assert run(user_id) == "done"


def test_a_step_that_raises_outside_its_relay_is_counted_and_then_fails(monkeypatch) -> None:
    user_id = create_user()
    run_saga_subscriber()

    def broken(instance: SagaInstance) -> None:
        raise RuntimeError("boom")

    saga = registry.get(welcome.SAGA_TYPE)
    monkeypatch.setitem(saga.steps, welcome.WELCOME, broken)
    for attempt in range(1, saga.max_attempts + 1):
        SagaInstance.objects.filter(pk=instance_for(user_id).pk).update(
            next_attempt_at=timezone.now()
        )
        outcome = run(user_id)
        assert instance_for(user_id).attempts == attempt
    assert outcome == "failed"
    assert instance_for(user_id).status == "failed"
    assert welcomes(user_id) == 0
