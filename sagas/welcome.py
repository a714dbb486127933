"""The welcome saga: UserCreated -> (delay) -> WelcomeUser -> UserWelcomed -> one email.

It is a process manager on the subscription engine, so each event reaches it exactly
once (the instance row is written in the batch's transaction with the checkpoint).
Timed and side-effecting work happens in steps (:mod:`sagas.steps`), never inside
the subscriber, so a delay or a slow mail server never holds up the feed.

Steps: ``welcome`` (when the delay is over: issue WelcomeUser), then the saga waits
for ``UserWelcomed`` to be committed and seen, then ``send_email``, then completed.
``UserDeleted`` before the welcome cancels it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
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


def _instance(event: RecordedEvent) -> SagaInstance | None:
    return (
        SagaInstance.objects.select_for_update()
        .filter(saga_type=SAGA_TYPE, correlation_key=str(event.data.user_id))
        .first()
    )


class WelcomeSaga(ProcessManager):
    name = "welcome-saga"

    @handles(UserCreated)
    def started(self, event: RecordedEvent) -> None:
        data: UserCreated = event.data
        delay = timedelta(seconds=settings.WELCOME_DELAY_SECONDS)
        instance, created = SagaInstance.objects.get_or_create(
            saga_type=SAGA_TYPE,
            correlation_key=str(data.user_id),
            defaults={
                "status": SagaInstance.Status.WAITING,
                "step": WELCOME,
                "next_attempt_at": event.recorded_at + delay,
                "handled_events": [str(event.event_id)],
                "data": {
                    "user_id": str(data.user_id),
                    "email": data.email,
                    "first_name": data.first_name,
                    "created_event_id": str(event.event_id),
                    "correlation_id": event.metadata.get("correlation_id"),
                },
            },
        )
        if created:
            steps.schedule(instance)

    @handles(UserWelcomed)
    def welcomed(self, event: RecordedEvent) -> None:
        instance = _instance(event)
        if instance is None or not instance.is_open or instance.step == SEND_EMAIL:
            return
        instance.handled_events = [*instance.handled_events, str(event.event_id)]
        instance.status = SagaInstance.Status.STARTED
        instance.step = SEND_EMAIL
        instance.attempts = 0
        instance.next_attempt_at = timezone.now()
        instance.updated_at = timezone.now()
        instance.save()
        steps.schedule(instance)

    @handles(UserDeleted)
    def deleted(self, event: RecordedEvent) -> None:
        instance = _instance(event)
        if instance is None or not instance.is_open or instance.step != WELCOME:
            return  # welcomed already: the email still goes to the address it was for
        instance.handled_events = [*instance.handled_events, str(event.event_id)]
        steps.cancel(instance, reason="the user was deleted before the welcome")


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
            steps.cancel(instance, reason=str(exc))
            return
    if str(command_id) not in instance.issued_commands:
        instance.issued_commands = [*instance.issued_commands, str(command_id)]
    instance.status = SagaInstance.Status.STARTED
    instance.step = AWAIT_WELCOMED
    instance.attempts = 0
    instance.next_attempt_at = None


def email_step(instance: SagaInstance) -> None:
    """Send the welcome email; the row lock (held across the send) keeps it to one.

    If the process dies after the mail server accepted the message and before this
    transaction commits, the step runs again and the email goes out a second time:
    that window is the SMTP reply plus one commit, milliseconds.
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


def sweep() -> int:
    """Queue every due step (the safety net for lost or never-sent step tasks)."""
    ids = steps.due_instances(STEPS)
    from sagas.tasks import run_saga_step

    for instance_id in ids:
        transaction.on_commit(lambda i=instance_id: run_saga_step.delay(i))
    return len(ids)
