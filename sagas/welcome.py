"""The welcome saga: UserCreated -> (delay) -> WelcomeUser -> UserWelcomed -> one email.

Its subscriber (a process manager on the subscription engine) opens an instance per
created user and cancels it when the user is deleted first; the instance rows are
written in the batch's transaction with the checkpoint, so each event counts once.
The steps run as Celery tasks on the mail queue (:mod:`sagas.runner`): ``welcome``
issues WelcomeUser once the delay is over, ``send_email`` reads the user's address at
that moment from the stream and sends one email, unless that address had a welcome
within ``WELCOME_EMAIL_COOLDOWN_SECONDS``. The instance keeps no personal data.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from eventstore import reads, subscribers
from eventstore.context import message_context
from eventstore.errors import StreamNotFound
from eventstore.reads import RecordedEvent
from eventstore.subscribers import ProcessManager, handles
from sagas import dispatch, mail, observe, registry, runner
from sagas.models import SagaInstance
from users import handlers
from users.aggregate import User
from users.commands import WelcomeUser
from users.errors import AlreadyWelcomed, UserIsDeleted, UserNotFound
from users.events import UserCreated, UserDeleted

SAGA_TYPE = "welcome"
WELCOME, SEND_EMAIL, DONE = "welcome", "send_email", "done"
TEMPLATE = "sagas/welcome_email"
_COMMAND_NAMESPACE = uuid.UUID("0b5e7d1c-6a41-4f0e-9a53-9f1c2b7d4e10")
logger = structlog.stdlib.get_logger(__name__)


class WelcomeSaga(ProcessManager):
    """Opens and cancels welcome instances; the steps do the rest.

    A batch reads the instances it touches with one locking query, folds its events over
    them in memory and writes them with one insert and one update, so its transaction
    holds an id only briefly. Once it commits, the new instances' steps are queued.
    """

    name = "welcome-saga"

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        keys = {str(event.data.user_id) for event in events}
        with transaction.atomic():  # the engine's batch transaction, or one of its own
            locked = (
                SagaInstance.objects.select_for_update()
                .filter(saga_type=SAGA_TYPE, correlation_key__in=keys)
                .order_by("pk")
            )
            instances = {instance.correlation_key: instance for instance in locked}
            created: list[SagaInstance] = []
            changed: dict[int, SagaInstance] = {}
            for event in events:
                self.dispatch(event, instances, created, changed)
            if created:
                # A concurrent redelivery may have inserted one meanwhile: keep that one.
                SagaInstance.objects.bulk_create(created, ignore_conflicts=True)
            if changed:
                SagaInstance.objects.bulk_update(
                    changed.values(),
                    ["handled_events", "status", "last_error", "next_attempt_at",
                     "updated_at", "finished_at"],
                )  # fmt: skip
            if created:
                opened = [instance.correlation_key for instance in created]
                transaction.on_commit(lambda: _dispatch_opened(opened), robust=True)

    @handles(UserCreated)
    def started(self, instances: dict, created: list, changed: dict, event: RecordedEvent) -> None:
        key = str(event.data.user_id)
        if key in instances:
            return  # a redelivery: this user's saga exists already
        instance = SagaInstance(
            saga_type=SAGA_TYPE,
            correlation_key=key,
            status=SagaInstance.Status.WAITING,
            step=WELCOME,
            next_attempt_at=event.recorded_at + timedelta(seconds=settings.WELCOME_DELAY_SECONDS),
            handled_events=[str(event.event_id)],
            data={
                "created_event_id": str(event.event_id),
                "correlation_id": event.metadata.get("correlation_id"),
                **observe.trace_context(event.metadata),
            },
        )
        instances[key] = instance
        created.append(instance)

    @handles(UserDeleted)
    def deleted(self, instances: dict, created: list, changed: dict, event: RecordedEvent) -> None:
        instance = instances.get(str(event.data.user_id))
        if instance is None or not instance.is_open:
            return  # welcomed and mailed already, or never started
        instance.handled_events = [*instance.handled_events, str(event.event_id)]
        runner.mark_cancelled(instance, reason="the user was deleted before the email")
        if instance.pk is not None:
            changed[instance.pk] = instance


def _dispatch_opened(keys: list[str]) -> None:
    dispatch.schedule(SagaInstance.objects.filter(saga_type=SAGA_TYPE, correlation_key__in=keys))


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
            result = handlers.handle(WelcomeUser(user_id=uuid.UUID(instance.correlation_key)))
            # The email step, next in the same run, reads the stream again only if it moved.
            instance.user_after_welcome = result.user  # type: ignore[attr-defined]
        except AlreadyWelcomed:
            pass  # an earlier attempt committed it
        except (UserIsDeleted, UserNotFound) as exc:
            runner.mark_cancelled(instance, reason=str(exc))
            return
    if str(command_id) not in instance.issued_commands:
        instance.issued_commands = [*instance.issued_commands, str(command_id)]
    instance.status = SagaInstance.Status.STARTED
    instance.step = SEND_EMAIL
    instance.attempts = 0
    instance.next_attempt_at = timezone.now()


def _user_now(instance: SagaInstance) -> User | None:
    """The user as its stream says it is now (the read model may trail it)."""
    known: User | None = getattr(instance, "user_after_welcome", None)
    if known is not None and reads.stream_version(known.stream_id) == known.version:
        return known
    try:
        return handlers.repository.load(uuid.UUID(instance.correlation_key))
    except StreamNotFound:
        return None


def email_step(instance: SagaInstance) -> None:
    """Send the welcome email to the address the user has now, at most once.

    The instance's lock (held across the send) keeps it to one run at a time. If the
    process dies after the relay accepted the message and before this step's transaction
    commits, the step runs again and the email goes out a second time: that window is
    the relay's reply plus one short commit.
    """
    user = _user_now(instance)
    if user is None or not user.is_active:
        runner.mark_cancelled(instance, reason="the user was deleted before the email")
        return
    now = timezone.now()
    if mail.claim_cooldown(SAGA_TYPE, user.email, settings.WELCOME_EMAIL_COOLDOWN_SECONDS):
        mail.send(_message(instance, user))
        mail.record_sent(SAGA_TYPE, user.email)
        logger.info("email sent", user_id=instance.correlation_key, template=TEMPLATE)
        sent: dict[str, Any] = {"email_sent_at": now.isoformat(), "template": TEMPLATE}
    else:
        sent = {"email_skipped": "this address had a welcome within the cooldown"}
        logger.info("email skipped", user_id=instance.correlation_key, reason="cooldown")
    instance.data = {**instance.data, **sent}
    instance.status = SagaInstance.Status.COMPLETED
    instance.step = DONE
    instance.next_attempt_at = None  # attempts stay: how many sends failed before this one
    instance.finished_at = now


def _message(instance: SagaInstance, user: User) -> EmailMultiAlternatives:
    context = {"first_name": user.first_name, "site": settings.SITE_NAME}
    message = EmailMultiAlternatives(
        subject=render_to_string(f"{TEMPLATE}_subject.txt", context).strip(),
        body=render_to_string(f"{TEMPLATE}.txt", context),
        to=[user.email],
        headers={"X-Saga-Instance": str(instance.pk)},
    )
    message.attach_alternative(render_to_string(f"{TEMPLATE}.html", context), "text/html")
    return message


def register() -> None:
    """Register the saga's steps and its subscriber (from ``SagasConfig.ready()``)."""
    registry.register(
        registry.SagaType(
            name=SAGA_TYPE,
            steps={WELCOME: welcome_step, SEND_EMAIL: email_step},
            queue=settings.MAIL_QUEUE,
            subject_stream=lambda key: User.stream_id_for(uuid.UUID(key)),
        )
    )
    subscribers.register(WelcomeSaga())
