"""The welcome saga under retries, races and crashes (real PostgreSQL, Redis, Celery)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from django.core import mail
from django.utils import timezone

from eventstore import store, subscriptions
from eventstore.models import Event
from sagas import welcome
from sagas.models import SagaInstance
from tests.conftest import settle
from tests.processes import celery_beat, celery_worker, child_env, wait_for
from tests.testapp.mail import FlakyBackend, XidProbeBackend
from tests.testapp.models import Switch
from users import handlers
from users.commands import CreateUser, DeleteUser

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runner_welcomes(monkeypatch) -> None:
    """Leave the welcome step to the runner, as when the delay is still running when the
    saga's subscriber opens the instance (tests of the runner's own welcome path)."""
    monkeypatch.setattr(welcome.WelcomeSaga, "welcomes_when_due", False)


def create_user(email: str | None = None) -> uuid.UUID:
    result = handlers.handle(
        CreateUser(
            email=email or f"w{uuid.uuid4().hex[:8]}@example.com",
            first_name="Wil",
            last_name="Come",
        )
    )
    return result.user.id


def run_saga_subscriber() -> None:
    settle()
    subscriptions.catch_up(subscriptions.get("welcome-saga"))


def instance_for(user_id: uuid.UUID) -> SagaInstance:
    return SagaInstance.objects.get(saga_type="welcome", correlation_key=str(user_id))


def welcomes(user_id: uuid.UUID) -> int:
    return Event.objects.filter(stream_id=f"user-{user_id}", event_type="UserWelcomed").count()


def drive(user_id: uuid.UUID) -> None:
    """Run the saga in this process, step by step, as the worker would."""
    for _ in range(4):
        run_saga_subscriber()
        instance = instance_for(user_id)
        if not instance.is_open:
            return
        welcome.run(instance.pk)


def test_a_created_user_is_welcomed_once_by_the_worker(celery_worker, settings) -> None:
    user_id = create_user("hello@example.com")
    wait_for(lambda: SagaInstance.objects.filter(status="completed").count() == 1, 30, "saga")
    # The email may go out before the saga's subscriber has seen UserWelcomed.
    wait_for(lambda: len(instance_for(user_id).handled_events) == 2, 30, "UserWelcomed seen")
    instance = instance_for(user_id)
    assert instance.step == "done"
    assert welcomes(user_id) == 1
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["hello@example.com"]
    assert "Wil" in mail.outbox[0].body
    assert mail.outbox[0].alternatives[0][1] == "text/html"
    assert len(instance.handled_events) == 2  # UserCreated and UserWelcomed
    assert instance.issued_commands == [str(welcome.welcome_command_id(instance))]


def test_deleted_before_the_delay_is_cancelled(settings) -> None:
    settings.WELCOME_DELAY_SECONDS = 30
    user_id = create_user()
    run_saga_subscriber()
    instance = instance_for(user_id)
    assert (instance.status, instance.step) == ("waiting", "welcome")
    assert welcome.run(instance.pk) == "not due"
    handlers.handle(DeleteUser(user_id=user_id))
    run_saga_subscriber()
    instance.refresh_from_db()
    assert instance.status == "cancelled"
    SagaInstance.objects.filter(pk=instance.pk).update(next_attempt_at=timezone.now())
    assert welcome.run(instance.pk) == "already cancelled"
    assert welcomes(user_id) == 0
    assert mail.outbox == []


def test_deleted_while_the_step_runs_cancels_without_welcome(runner_welcomes) -> None:
    user_id = create_user()
    run_saga_subscriber()
    handlers.handle(DeleteUser(user_id=user_id))  # the saga has not seen it yet
    welcome.run(instance_for(user_id).pk)
    assert instance_for(user_id).status == "cancelled"
    assert welcomes(user_id) == 0
    assert mail.outbox == []


def test_the_same_user_created_twice_and_racing_steps_welcome_once(
    threads, runner_welcomes
) -> None:
    user_id = create_user()
    created = store.read_stream(f"user-{user_id}")[0]
    saga = subscriptions.get("welcome-saga")
    run_saga_subscriber()
    saga.handle_batch([created])  # a redelivery, outside the checkpoint's protection
    assert SagaInstance.objects.filter(correlation_key=str(user_id)).count() == 1
    instance_id = instance_for(user_id).pk

    threads(6, lambda i: welcome.run(instance_id))  # six workers race on the welcome step
    assert welcomes(user_id) == 1
    run_saga_subscriber()
    threads(6, lambda i: welcome.run(instance_id))  # and on the email step
    assert welcomes(user_id) == 1
    assert len(mail.outbox) == 1
    assert instance_for(user_id).status == "completed"


def test_email_failing_twice_then_working_sends_one(settings) -> None:
    settings.EMAIL_BACKEND = "tests.testapp.mail.FlakyBackend"
    FlakyBackend.failures_left = 2
    user_id = create_user()
    run_saga_subscriber()  # welcomes in its batch: now the email step
    instance = instance_for(user_id)
    assert (instance.step, welcomes(user_id)) == ("send_email", 1)
    for attempt in (1, 2):
        assert welcome.run(instance.pk) == "failed attempt"
        instance.refresh_from_db()
        assert (instance.attempts, instance.step) == (attempt, "send_email")
        assert "ConnectionRefusedError" in instance.last_error
        assert instance.next_attempt_at > timezone.now()
        assert welcome.run(instance.pk) == "not due"  # backing off
        SagaInstance.objects.filter(pk=instance.pk).update(next_attempt_at=timezone.now())
    assert welcome.run(instance.pk) == "done"
    instance.refresh_from_db()
    assert (instance.status, instance.attempts) == ("completed", 2)
    assert len(mail.outbox) == 1
    assert welcomes(user_id) == 1


def test_causation_and_correlation_along_the_chain() -> None:
    from eventstore.context import message_context

    correlation, command = uuid.uuid4(), uuid.uuid4()
    with message_context(actor="user:alice", correlation_id=correlation, command_id=command):
        user_id = create_user()
    drive(user_id)
    created, welcomed = store.read_stream(f"user-{user_id}")
    assert created.metadata["correlation_id"] == str(correlation)
    assert created.metadata["causation_id"] == str(command)
    assert welcomed.event_type == "UserWelcomed"
    assert welcomed.metadata["correlation_id"] == str(correlation)
    assert welcomed.metadata["causation_id"] == str(created.event_id)
    assert welcomed.metadata["actor"] == "saga:welcome"
    instance = instance_for(user_id)
    assert welcomed.metadata["command_id"] == instance.issued_commands[0]
    assert instance.status == "completed"


def test_a_due_welcome_is_issued_as_its_batch_commits_and_the_runner_sends_the_email(
    threads, monkeypatch
) -> None:
    """With no delay, the process that ran the saga's batch welcomes right after it
    commits (one transaction for the lot, not the batch's own); the emails are the
    runner's. A runner that comes while those welcomes run leaves them alone and looks
    again later."""
    import threading

    from django.core.cache import cache

    from sagas import steps

    users = [create_user() for _ in range(5)]
    paused, go = threading.Event(), threading.Event()

    def welcome_after_a_pause(instance: SagaInstance) -> None:
        if not paused.is_set():
            paused.set()
            assert go.wait(30)
        welcome.welcome_step(instance)

    monkeypatch.setitem(welcome.STEPS, welcome.WELCOME, welcome_after_a_pause)
    monkeypatch.setattr(steps, "BATCH_TRANSACTION_SECONDS", 30.0)  # the pause splits no batch

    def subscriber_or_runner(i: int) -> int:
        if i == 0:
            run_saga_subscriber()  # its commit runs the welcomes, here, in this thread
            return 0
        assert paused.wait(30)  # the welcomes hold their instances' locks now
        cache.clear()  # forget the wake-ups queued so far (broker queue and keys)
        try:
            return welcome.run_due()
        finally:
            go.set()

    assert threads(2, subscriber_or_runner) == [0, 0]  # the runner took none of them up
    assert [instance_for(u).step for u in users] == ["send_email"] * 5
    assert [welcomes(u) for u in users] == [1] * 5
    assert len(_welcomed_transactions(users)) == 1
    assert mail.outbox == []  # never from the subscriber
    assert _queued_runs() == 1  # the welcomes' wake-up, for the emails
    assert _queued_runs(delayed=True) == 1  # the runner's later look at what it found busy

    assert welcome.run_due() == 5
    assert [instance_for(u).status for u in users] == ["completed"] * 5
    assert len(mail.outbox) == 5
    run_saga_subscriber()  # sees the UserWelcomed events: records them, issues nothing
    assert [welcomes(u) for u in users] == [1] * 5
    assert all(len(instance_for(u).handled_events) == 2 for u in users)
    assert len(mail.outbox) == 5


def test_a_batch_of_welcomes_wakes_the_subscribers_once_after_its_commit(wake_sends) -> None:
    """Five welcomes commit together; their five appends need one wake-up, not five."""
    users = [create_user() for _ in range(5)]
    wake_sends.clear()  # the creates' own wake-ups
    run_saga_subscriber()  # its commit runs the five welcomes, in one transaction
    assert [welcomes(u) for u in users] == [1] * 5
    assert len(_welcomed_transactions(users)) == 1
    assert wake_sends == [["users", "welcome-saga"]]


def test_a_welcome_failing_as_its_batch_commits_is_undone_alone_and_retried_by_the_runner(
    monkeypatch,
) -> None:
    users = [create_user() for _ in range(3)]
    broken = str(users[1])

    def welcome_or_fail_after_appending(instance: SagaInstance) -> None:
        welcome.welcome_step(instance)
        if instance.correlation_key == broken:
            raise RuntimeError("failed after its append")

    monkeypatch.setitem(welcome.STEPS, welcome.WELCOME, welcome_or_fail_after_appending)
    run_saga_subscriber()
    assert [welcomes(u) for u in users] == [1, 0, 1]
    failed = instance_for(users[1])
    assert (failed.status, failed.step, failed.attempts) == ("waiting", "welcome", 1)
    assert "failed after its append" in failed.last_error
    assert failed.next_attempt_at > timezone.now()  # backing off, like any failed step

    monkeypatch.setitem(welcome.STEPS, welcome.WELCOME, welcome.welcome_step)
    SagaInstance.objects.filter(pk=failed.pk).update(next_attempt_at=timezone.now())
    assert welcome.run_due() == 3
    assert [welcomes(u) for u in users] == [1, 1, 1]
    assert [instance_for(u).status for u in users] == ["completed"] * 3
    assert len(mail.outbox) == 3


def test_a_runner_that_finds_an_instance_busy_looks_again_later(threads, runner_welcomes) -> None:
    """An instance locked elsewhere (a subscriber's process welcoming it, a slow send) is
    skipped for the rest of the turn; the turn must leave a later look for it."""
    import threading

    from django.core.cache import cache

    from sagas import steps

    users = [create_user() for _ in range(2)]
    run_saga_subscriber()
    held = instance_for(users[0]).pk
    locked, done = threading.Event(), threading.Event()

    def hold_or_run(i: int) -> int:
        if i == 0:
            with steps._instance_lock(held):  # another session holds the first one
                locked.set()
                done.wait(30)
            return 0
        locked.wait(30)
        cache.clear()  # forget the wake-ups queued so far (broker queue and keys)
        try:
            return welcome.run_due()
        finally:
            done.set()

    assert threads(2, hold_or_run) == [0, 1]
    assert instance_for(users[0]).status == "waiting"  # skipped, and not lost:
    assert _queued_runs(delayed=True) == 1
    assert welcome.run_due() == 1
    assert [instance_for(u).status for u in users] == ["completed"] * 2


def test_created_and_deleted_in_one_batch_is_cancelled_without_a_welcome() -> None:
    user_id = create_user()
    handlers.handle(DeleteUser(user_id=user_id))
    run_saga_subscriber()  # both events in one batch: the deletion wins
    assert instance_for(user_id).status == "cancelled"
    assert welcomes(user_id) == 0
    assert welcome.run_due() == 0
    assert mail.outbox == []


def test_operator_retry_and_cancel(settings) -> None:
    from sagas import steps

    settings.EMAIL_BACKEND = "tests.testapp.mail.FlakyBackend"
    FlakyBackend.failures_left = 100
    user_id = create_user()
    run_saga_subscriber()
    instance = instance_for(user_id)
    SagaInstance.objects.filter(pk=instance.pk).update(attempts=steps.MAX_ATTEMPTS - 1)
    assert welcome.run(instance.pk) == "failed attempt"
    instance.refresh_from_db()
    assert instance.status == "failed"
    FlakyBackend.failures_left = 0
    steps.retry(instance)
    assert welcome.run(instance.pk) == "done"
    assert len(mail.outbox) == 1
    with pytest.raises(ValueError, match="cannot be cancelled"):
        steps.cancel(instance_for(user_id))


def test_worker_killed_before_the_email_sends_it_once_after_restart(tmp_path) -> None:
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = child_env(
        EMAIL_BACKEND="tests.testapp.mail.HangingBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        SUBSCRIBER_SAFETY_NET_SECONDS="1",
    )
    Switch.objects.create(name="hang-on-email")
    worker = celery_worker(env, tmp_path / "worker1.log")
    try:
        user_id = create_user("crash@example.com")
        wait_for((mail_dir / "sending.marker").exists, 60, "the email step to start")
    finally:
        worker.kill()  # SIGKILL to the whole worker, mid-send
    assert welcomes(user_id) == 1  # UserWelcomed was committed before the email step
    assert instance_for(user_id).step == "send_email"
    Switch.objects.all().delete()
    (mail_dir / "sending.marker").unlink()

    worker = celery_worker(env, tmp_path / "worker2.log")
    beat = celery_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    try:
        wait_for(lambda: instance_for(user_id).status == "completed", 60, "the restarted saga")
        time.sleep(1.5)  # one more sweep: it must not send again
    finally:
        beat.stop()
        worker.stop()
    sent = list(mail_dir.glob("*.log"))
    assert len(sent) == 1
    assert "crash@example.com" in sent[0].read_text()
    assert welcomes(user_id) == 1


def test_sagas_command_lists_retries_and_cancels(settings) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    settings.WELCOME_DELAY_SECONDS = 60
    user_id = create_user()
    run_saga_subscriber()
    instance = instance_for(user_id)
    out = StringIO()
    call_command("sagas", "list", "--status", "waiting", stdout=out)
    assert str(user_id) in out.getvalue()
    call_command("sagas", "cancel", str(instance.pk), stdout=StringIO())
    assert instance_for(user_id).status == "cancelled"
    with pytest.raises(CommandError, match="cancelled"):
        call_command("sagas", "retry", str(instance.pk))
    with pytest.raises(CommandError, match="no saga instance"):
        call_command("sagas", "cancel", "999999")


def test_the_runner_takes_every_due_step_and_sends_without_a_transaction_id(
    settings, runner_welcomes
) -> None:
    settings.EMAIL_BACKEND = "tests.testapp.mail.XidProbeBackend"
    XidProbeBackend.seen = []
    users = [create_user() for _ in range(5)]
    deleted = users.pop()
    run_saga_subscriber()
    handlers.handle(DeleteUser(user_id=deleted))  # its step must cancel, not welcome
    assert welcome.run_due() == 5  # five instances, both steps of each in one go
    assert [instance_for(u).status for u in users] == ["completed"] * 4
    assert instance_for(deleted).status == "cancelled"
    assert [welcomes(u) for u in users] == [1] * 4
    assert welcomes(deleted) == 0
    assert len(mail.outbox) == 4
    # Sent while holding the instance's advisory lock, but no transaction id: a slow mail
    # server must not hold back the subscribers' horizon.
    assert XidProbeBackend.seen == [None] * 4
    assert welcome.run_due() == 0  # nothing is due any more
    run_saga_subscriber()  # sees the UserWelcomed events: records them, sends nothing more
    assert len(mail.outbox) == 4
    assert all(len(instance_for(u).handled_events) == 2 for u in users)


def test_the_runner_wakes_itself_for_steps_that_fall_due_later(settings) -> None:
    """One subscriber batch wakes the runner for its earliest instance only; the others
    of that batch (due a little later) must not wait for beat's sweep."""
    from django.core.cache import cache

    from tests.integration.test_celery_wakeups import broker_tasks

    settings.WELCOME_DELAY_SECONDS = 1.0
    first = create_user()
    time.sleep(0.6)
    second = create_user()
    run_saga_subscriber()  # both in one batch
    due = instance_for(first).next_attempt_at
    time.sleep(max(0.0, (due - timezone.now()).total_seconds()) + 0.05)
    cache.clear()  # forget the wake-ups queued so far (broker queue and keys)
    assert welcome.run_due() == 1
    assert instance_for(first).status == "completed"
    assert instance_for(second).status == "waiting"  # not due yet
    assert ("sagas.tasks.run_due_saga_steps", "()") in broker_tasks()


def _welcomed_transactions(user_ids: list[uuid.UUID]) -> set[int]:
    """The transaction ids the users' UserWelcomed events were appended in."""
    return set(
        Event.objects.filter(
            stream_id__in=[f"user-{u}" for u in user_ids], event_type="UserWelcomed"
        ).values_list("transaction_id", flat=True)
    )


def test_due_welcomes_share_one_transaction_and_a_failing_one_is_undone_alone(
    monkeypatch, runner_welcomes
) -> None:
    from sagas import steps

    monkeypatch.setattr(steps, "BATCH_TRANSACTION_SECONDS", 30.0)  # no split by time
    users = [create_user() for _ in range(6)]
    run_saga_subscriber()
    broken = str(users[2])

    def welcome_or_fail_after_appending(instance: SagaInstance) -> None:
        welcome.welcome_step(instance)  # appends UserWelcomed in the batch's transaction
        if instance.correlation_key == broken:
            raise RuntimeError("failed after its append")

    ran = steps.run_due(
        {welcome.WELCOME: welcome_or_fail_after_appending, welcome.SEND_EMAIL: welcome.email_step},
        batched=welcome.BATCHED_STEPS,
    )
    assert ran == 6
    good = [u for u in users if u != users[2]]
    assert [welcomes(u) for u in good] == [1] * 5
    assert len(_welcomed_transactions(good)) == 1  # one commit for the five
    assert [instance_for(u).status for u in good] == ["completed"] * 5
    assert len(mail.outbox) == 5
    assert welcomes(users[2]) == 0  # its append was undone with its savepoint
    failed = instance_for(users[2])
    assert (failed.status, failed.step, failed.attempts) == ("waiting", "welcome", 1)
    assert "failed after its append" in failed.last_error


def test_an_instance_changed_during_a_batch_rolls_it_back_then_runs_one_by_one(
    threads, monkeypatch, runner_welcomes
) -> None:
    """The subscriber (or an operator) cancels an instance while its batch runs: the batch
    must not commit a welcome for it."""
    from sagas import steps

    monkeypatch.setattr(steps, "BATCH_TRANSACTION_SECONDS", 30.0)
    users = [create_user() for _ in range(4)]
    run_saga_subscriber()
    victim = instance_for(users[3]).pk
    calls: list[str] = []

    def welcome_and_cancel_another(instance: SagaInstance) -> None:
        if not calls:  # on another connection, committed at once
            threads(1, lambda i: SagaInstance.objects.filter(pk=victim).update(status="cancelled"))
        calls.append(instance.correlation_key)
        welcome.welcome_step(instance)

    ran = steps.run_due(
        {welcome.WELCOME: welcome_and_cancel_another, welcome.SEND_EMAIL: welcome.email_step},
        batched=welcome.BATCHED_STEPS,
    )
    assert ran == 4
    # All four ran in the batch, which was rolled back; then the three still open ran
    # one by one, and the cancelled one did not.
    assert [calls.count(str(u)) for u in users] == [2, 2, 2, 1]
    assert welcomes(users[3]) == 0
    assert instance_for(users[3]).status == "cancelled"
    assert [welcomes(u) for u in users[:3]] == [1] * 3
    assert [instance_for(u).status for u in users[:3]] == ["completed"] * 3
    assert len(mail.outbox) == 3


def test_a_batch_the_database_refuses_runs_one_by_one(monkeypatch, runner_welcomes) -> None:
    """A deadlock (or any database error) on the batch's save loses no step."""
    from django.db import OperationalError

    from sagas import steps

    users = [create_user() for _ in range(3)]
    run_saga_subscriber()
    save_steps = steps._save_steps
    refusals: list[int] = []

    def refuse_once(done: list) -> None:
        if not refusals:
            refusals.append(len(done))
            raise OperationalError("deadlock detected")
        save_steps(done)

    monkeypatch.setattr(steps, "_save_steps", refuse_once)
    assert welcome.run_due() == 3
    assert refusals  # the batch was tried
    assert [welcomes(u) for u in users] == [1] * 3
    assert [instance_for(u).status for u in users] == ["completed"] * 3
    assert len(mail.outbox) == 3


def test_a_runner_that_loses_its_session_leaves_the_rest_of_its_page(threads) -> None:
    """The page's advisory locks live in one session: once it is gone (and Django has
    quietly reconnected), running more steps would run them unlocked."""
    from django.db import connection

    from sagas import steps

    users = [create_user() for _ in range(4)]
    run_saga_subscriber()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        runner_pid = cursor.fetchone()[0]
    sent: list[str] = []

    def send_then_lose_the_session(instance: SagaInstance) -> None:
        welcome.email_step(instance)
        sent.append(instance.correlation_key)
        if len(sent) == 1:  # the server drops the runner's session after the first send
            threads(1, lambda i: connection.cursor().execute(
                "SELECT pg_terminate_backend(%s)", [runner_pid]
            ))  # fmt: skip

    steps.run_due(
        {welcome.WELCOME: welcome.welcome_step, welcome.SEND_EMAIL: send_then_lose_the_session},
        batched=welcome.BATCHED_STEPS,
    )
    assert len(sent) == 1  # the page stopped there
    assert [welcomes(u) for u in users] == [1] * 4
    open_ones = [u for u in users if instance_for(u).step == "send_email"]
    assert len(open_ones) == 4  # the first one's commit was lost with the session
    with connection.cursor() as cursor:  # and no lock outlived it
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cursor.fetchone()[0] == 0

    SagaInstance.objects.update(next_attempt_at=timezone.now())  # skip the backoff
    assert welcome.run_due() == 4
    assert [instance_for(u).status for u in users] == ["completed"] * 4
    # The documented window: the email whose commit was lost goes out again; no other.
    first = instance_for(uuid.UUID(sent[0])).data["email"]
    sends = Counter(m.to[0] for m in mail.outbox)
    assert sends.pop(first) == 2
    assert sorted(sends.values()) == [1, 1, 1]


def _queued_runs(*, delayed: bool = False) -> int:
    """Runs of the saga runner queued to start now (or, with ``delayed``, later)."""
    from tests.integration.test_celery_wakeups import broker_headers

    return sum(
        1
        for h in broker_headers()
        if h["task"] == "sagas.tasks.run_due_saga_steps" and bool(h.get("eta")) == delayed
    )


def test_wake_ups_during_a_turn_queue_no_more_runs_and_its_end_lets_them(
    monkeypatch, runner_welcomes
) -> None:
    """Each subscriber batch wakes the runner; while a turn finds work they must not queue
    a task each (that found the runner busy), and once it stops they must queue again."""
    from django.core.cache import cache

    from sagas import steps
    from sagas.tasks import run_due_saga_steps

    cache.clear()  # the broker's queue and the marks (same Redis database)
    for _ in range(3):
        create_user()
    run_saga_subscriber()  # its commit wakes the runner
    assert _queued_runs() == 1

    def welcome_and_wake(instance: SagaInstance) -> None:
        welcome.welcome_step(instance)
        steps.wake_runner()  # as another subscriber batch committing meanwhile would

    monkeypatch.setitem(welcome.STEPS, welcome.WELCOME, welcome_and_wake)
    assert run_due_saga_steps() == 3  # the queued run, as the worker runs it
    assert _queued_runs() == 1  # the wake-ups during the turn queued nothing
    steps.wake_runner()  # the turn has ended: a new step must get a run
    assert _queued_runs() == 2


def test_a_turn_out_of_time_and_the_sweep_queue_a_run_despite_the_mark() -> None:
    from django.core.cache import cache

    from sagas import steps

    cache.clear()
    users = [create_user() for _ in range(3)]
    run_saga_subscriber()  # marks a queued run
    assert _queued_runs() == 1
    ran = steps.run_due(welcome.STEPS, batched=welcome.BATCHED_STEPS, time_budget=0, page=1)
    assert ran == 1
    assert _queued_runs() == 2  # the rest must not wait for the sweep

    # The queued run is lost (its worker died, say) while its mark is left behind.
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    assert cache.get(steps.RUNNER_NOW_KEY) is not None
    assert _queued_runs() == 0
    assert welcome.sweep() == 1
    assert _queued_runs() == 1
    assert welcome.run_due() == 2
    assert [instance_for(u).status for u in users] == ["completed"] * 3


def test_tasks_that_find_the_runner_busy_leave_one_later_look_between_them() -> None:
    """Each busy task used to queue its own delayed run, and each of those, busy again,
    another: while a long turn ran they piled up (12 a second in the welcome benchmark)."""
    import threading

    from django.core.cache import cache
    from django.db import connections

    from sagas.tasks import run_due_saga_steps

    cache.clear()
    held, release = threading.Event(), threading.Event()

    def another_runner(i: int) -> None:  # holds the runner's lock on its own connection
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtextextended('saga-runner', 0))")
            held.set()
            release.wait(30)
            cursor.execute("SELECT pg_advisory_unlock(hashtextextended('saga-runner', 0))")
        connections["default"].close()

    runner = threading.Thread(target=another_runner, args=(0,))
    runner.start()
    try:
        assert held.wait(10)
        for _ in range(3):
            assert run_due_saga_steps() == 0  # busy
            time.sleep(0.15)  # past the 0.1 s slots delayed runs were grouped in
        assert _queued_runs(delayed=True) == 1
    finally:
        release.set()
        runner.join(10)
    assert run_due_saga_steps(retry=True) == 0  # the later look, with nothing due
    assert run_due_saga_steps() == 0
