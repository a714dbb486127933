"""The welcome saga: UserCreated -> (delay) -> WelcomeUser -> UserWelcomed -> one email.

It is a process manager on the subscription engine, so each event reaches it exactly
once (the instance row is written in the batch's transaction with the checkpoint).
Timed and side-effecting work happens in steps (:mod:`sagas.steps`), never inside the
batch's transaction, so a delay or a slow mail server never holds up the feed. A welcome
already due when its instance opens is run by the same process right after the batch
commits (the runner's way, in transactions of its own); the runner does everything else.

Steps: ``welcome`` (when the delay is over: issue WelcomeUser; its transaction commits
``UserWelcomed`` and moves the instance on), then ``send_email``, then completed.
``UserDeleted`` before the welcome cancels it. (``await_welcomed`` is where instances
started before 2026-11-27 wait for their ``UserWelcomed``; the subscriber moves them on.)
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from eventstore.context import message_context
from eventstore.store import RecordedEvent
from eventstore.subscriptions import ProcessManager, handles
from sagas import steps
from sagas.models import SagaInstance
from users import handlers
from users.commands import WelcomeUser
from users.errors import AlreadyWelcomed, UserIsDeleted, UserNotFound
from users.events import UserCreated, UserDeleted, UserWelcomed

SAGA_TYPE = "welcome"
WELCOME, AWAIT_WELCOMED, SEND_EMAIL, DONE = "welcome", "await_welcomed", "send_email", "done"
_COMMAND_NAMESPACE = uuid.UUID("0b5e7d1c-6a41-4f0e-9a53-9f1c2b7d4e10")


class WelcomeSaga(ProcessManager):
    """Opens, moves and cancels welcome instances; the steps do the rest.

    A batch is folded in memory over the instances it touches (read with one locking
    query), then written with one insert and one update: its transaction takes an id
    only for those few milliseconds, so it barely holds back the other subscribers.
    """

    name = "welcome-saga"
    # A welcome that is due as its instance opens (no delay, or a feed running late) is
    # issued by this process right after the batch commits, not by a runner task that
    # may be queued behind other tasks or busy with emails. Not in the batch's own
    # transaction: that would hold the row locks of the instances the batch moves (those
    # the runner is saving sent emails on) for as long as the welcomes take.
    welcomes_when_due: ClassVar[bool] = True

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        keys = {str(event.data.user_id) for event in events}
        with transaction.atomic():  # the engine's batch transaction, or one of its own
            locked = (
                SagaInstance.objects.select_for_update()
                .filter(saga_type=SAGA_TYPE, correlation_key__in=keys)
                .order_by("pk")
            )
            batch = _Batch({instance.correlation_key: instance for instance in locked})
            for event in events:
                self.dispatch(event, batch)
            batch.save()
            if self.welcomes_when_due and batch.created:
                opened = [instance.correlation_key for instance in batch.created]
                # robust: the batch is committed whatever happens to the welcomes (they
                # stay due, and the runner was woken for them), so an error there is only
                # logged; in a Celery task that includes a soft time limit's exception.
                transaction.on_commit(
                    lambda: steps.run_opened(SAGA_TYPE, opened, STEPS, BATCHED_STEPS), robust=True
                )

    @handles(UserCreated)
    def started(self, batch: _Batch, event: RecordedEvent) -> None:
        data: UserCreated = event.data
        key = str(data.user_id)
        if key in batch.instances:
            return  # a redelivery: this user's saga exists already
        delay = timedelta(seconds=settings.WELCOME_DELAY_SECONDS)
        batch.add(
            SagaInstance(
                saga_type=SAGA_TYPE,
                correlation_key=key,
                status=SagaInstance.Status.WAITING,
                step=WELCOME,
                next_attempt_at=event.recorded_at + delay,
                handled_events=[str(event.event_id)],
                data={
                    "user_id": key,
                    "email": data.email,
                    "first_name": data.first_name,
                    "created_event_id": str(event.event_id),
                    "correlation_id": event.metadata.get("correlation_id"),
                },
            )
        )

    @handles(UserWelcomed)
    def welcomed(self, batch: _Batch, event: RecordedEvent) -> None:
        instance = batch.record(event)  # the confirmation of the welcome, in every state
        if instance is None or not instance.is_open:
            return
        if instance.step in (WELCOME, AWAIT_WELCOMED):  # welcomed by an earlier attempt
            instance.status = SagaInstance.Status.STARTED
            instance.step = SEND_EMAIL
            instance.attempts = 0
            instance.next_attempt_at = timezone.now()

    @handles(UserDeleted)
    def deleted(self, batch: _Batch, event: RecordedEvent) -> None:
        instance = batch.instances.get(str(event.data.user_id))
        if instance is None or not instance.is_open or instance.step != WELCOME:
            return  # welcomed already: the email still goes to the address it was for
        batch.record(event)
        steps.mark_cancelled(instance, reason="the user was deleted before the welcome")


_UPDATE_SQL = """
UPDATE sagas_instance AS s
   SET handled_events = v.handled_events::jsonb, status = v.status, step = v.step,
       attempts = v.attempts, next_attempt_at = v.next_attempt_at,
       last_error = v.last_error, updated_at = v.updated_at, finished_at = v.finished_at
  FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[],
              %s::timestamptz[], %s::text[], %s::timestamptz[], %s::timestamptz[])
       AS v(id, handled_events, status, step, attempts, next_attempt_at, last_error,
            updated_at, finished_at)
 WHERE s.id = v.id
"""


def _update_all(instances: list[SagaInstance]) -> None:
    """One UPDATE for the whole batch: ``bulk_update`` builds a CASE per field and row,
    whose compiling took seconds for a 500-event batch, all of it with the batch's
    transaction id open (holding back every subscriber's horizon)."""
    columns = (
        [i.pk for i in instances],
        [json.dumps(i.handled_events) for i in instances],
        [i.status for i in instances],
        [i.step for i in instances],
        [i.attempts for i in instances],
        [i.next_attempt_at for i in instances],
        [i.last_error for i in instances],
        [i.updated_at for i in instances],
        [i.finished_at for i in instances],
    )
    with connection.cursor() as cursor:
        cursor.execute(_UPDATE_SQL, columns)


class _Batch:
    """The instances one subscriber batch reads, creates and changes."""

    def __init__(self, instances: dict[str, SagaInstance]) -> None:
        self.instances = instances
        self.created: list[SagaInstance] = []
        self.changed: dict[str, SagaInstance] = {}

    def add(self, instance: SagaInstance) -> None:
        self.instances[instance.correlation_key] = instance
        self.created.append(instance)

    def record(self, event: RecordedEvent) -> SagaInstance | None:
        """The event's instance, with the event recorded as handled by it."""
        key = str(event.data.user_id)
        instance = self.instances.get(key)
        if instance is not None:
            instance.handled_events = [*instance.handled_events, str(event.event_id)]
            instance.updated_at = timezone.now()
            if instance.pk is not None:
                self.changed[key] = instance
        return instance

    def save(self) -> None:
        if self.created:
            # A concurrent redelivery may have inserted one meanwhile: keep that one.
            SagaInstance.objects.bulk_create(self.created, ignore_conflicts=True)
        if self.changed:
            _update_all(list(self.changed.values()))
        due = [
            i.next_attempt_at
            for i in (*self.created, *self.changed.values())
            if i.is_open and i.step in STEPS and i.next_attempt_at is not None
        ]
        if due:
            earliest = min(due)
            transaction.on_commit(lambda: steps.wake_runner(earliest))


def welcome_command_id(instance: SagaInstance) -> uuid.UUID:
    """The same id on every retry, so the issued command is recognisable as one."""
    return uuid.uuid5(_COMMAND_NAMESPACE, f"{SAGA_TYPE}:{instance.correlation_key}")


def welcome_step(instance: SagaInstance) -> None:
    """Issue WelcomeUser, caused by the UserCreated that started the saga."""
    command_id = welcome_command_id(instance)
    correlation = instance.data.get("correlation_id")
    with message_context(
        actor=f"saga:{SAGA_TYPE}",
        correlation_id=uuid.UUID(correlation) if correlation else None,
        causation_id=uuid.UUID(instance.data["created_event_id"]),
        command_id=command_id,
    ):
        try:
            handlers.handle(WelcomeUser(user_id=uuid.UUID(instance.correlation_key)))
        except AlreadyWelcomed:
            pass  # an earlier attempt committed it; UserWelcomed will move us on
        except (UserIsDeleted, UserNotFound) as exc:
            steps.mark_cancelled(instance, reason=str(exc))
            return
    if str(command_id) not in instance.issued_commands:
        instance.issued_commands = [*instance.issued_commands, str(command_id)]
    # UserWelcomed is committed with this state (or was by an earlier attempt), so the
    # email is due as soon as this transaction commits.
    instance.status = SagaInstance.Status.STARTED
    instance.step = SEND_EMAIL
    instance.attempts = 0
    instance.next_attempt_at = timezone.now()


def email_step(instance: SagaInstance) -> None:
    """Send the welcome email; the instance's lock (held across the send) keeps it to one.

    If the process dies after the mail server accepted the message and before the
    step's transaction commits, the step runs again and the email goes out a second
    time: that window is the SMTP reply plus one short commit, milliseconds.
    """
    context = {"first_name": instance.data.get("first_name", ""), "site": settings.SITE_NAME}
    message = EmailMultiAlternatives(
        subject=render_to_string("sagas/welcome_email_subject.txt", context).strip(),
        body=render_to_string("sagas/welcome_email.txt", context),
        to=[instance.data["email"]],
        headers={"X-Saga-Instance": str(instance.pk)},
    )
    message.attach_alternative(render_to_string("sagas/welcome_email.html", context), "text/html")
    message.send(fail_silently=False)
    now = timezone.now()
    instance.data = {**instance.data, "email_sent_at": now.isoformat()}
    instance.status = SagaInstance.Status.COMPLETED
    instance.step = DONE
    instance.next_attempt_at = None  # attempts stay: how many sends failed before this one
    instance.finished_at = now


STEPS: dict[str, steps.Step] = {WELCOME: welcome_step, SEND_EMAIL: email_step}


def run(instance_id: int) -> str:
    return steps.run_step(instance_id, STEPS)


# The welcome step only writes to this database (UserWelcomed and the instance's state),
# so many instances share a transaction; the email step commits one by one, so a crash
# can send at most one email twice.
BATCHED_STEPS = frozenset({WELCOME})


def run_due() -> int:
    return steps.run_due(STEPS, batched=BATCHED_STEPS)


def run_turn() -> tuple[int, bool]:
    return steps.run_turn(STEPS, batched=BATCHED_STEPS)


def sweep() -> int:
    """The safety net: queue a run if a step is due (its wake-up may have been lost, or a
    runner that died left the mark of a queued run behind)."""
    due = len(steps.due_instances(STEPS, limit=1))
    if due:
        steps.queue_next_turn()
    return due
