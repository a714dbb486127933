"""Command handlers: the only writers of the users context.

Each handler loads the aggregate, calls one method, and appends the new events, all in
one transaction with the email reservation. A lost race (another writer appended first)
is retried from a fresh load; a version the client pinned with ``If-Match`` is checked
again on each load (:meth:`User.check_unchanged_since`). Each attempt shares one key ring
(:func:`eventstore.personal.key_scope`): the load and the append fetch the user's key once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from eventstore import personal
from eventstore.aggregate import Repository
from eventstore.errors import ConcurrencyError, StreamNotFound
from eventstore.models import Stream
from users.aggregate import User
from users.commands import Command, CreateUser, DeleteUser, EraseUser, UpdateUser, WelcomeUser
from users.errors import EmailAlreadyTaken, UserAlreadyExists, UserIsErased, UserNotFound
from users.models import EmailReservation, IdempotentRequest

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
repository = Repository(User)


@dataclass(frozen=True)
class CommandResult:
    """The aggregate's state after the command, and where its last event landed."""

    user: User
    position: int | None  # None when the command recorded nothing

    @property
    def version(self) -> int:
        return self.user.version


def _load(user_id: uuid.UUID, expected_version: int | None = None) -> User:
    try:
        user = repository.load(user_id)
    except StreamNotFound:
        raise UserNotFound(user_id) from None
    if expected_version is not None:
        user.check_unchanged_since(expected_version)
    return user


# Every create runs this: a prepared statement costs this process half the CPU of the
# ORM's create() (model instance, compiler, text binding) and PostgreSQL no parse or plan.
_RESERVATIONS = EmailReservation._meta.db_table
_RESERVE_SQL = f'INSERT INTO "{_RESERVATIONS}" ("email_hash", "user_id") VALUES (%s, %s)'


def _reserve_email(email: str, user_id: uuid.UUID) -> None:
    """Claim ``email`` (its keyed hash) for ``user_id``; waits for a concurrent claim to
    commit or roll back.

    No savepoint (two more round trips per create or email change): a clash ends the
    command, so the enclosing transaction is rolled back whole, never used after the error.
    """
    try:
        with (
            transaction.atomic(savepoint=False),
            connections[EmailReservation.objects.db].prepared_cursor() as cursor,
        ):
            cursor.execute(_RESERVE_SQL, [personal.keyed_hash(email), user_id])
    except IntegrityError:
        raise EmailAlreadyTaken(email) from None


def _save(user: User) -> CommandResult:
    result = repository.save(user)
    return CommandResult(user, result.last_position if result else None)


def _retrying(work: Callable[[], CommandResult]) -> CommandResult:
    """Run ``work`` again from a fresh load when another writer appended first.

    A client's If-Match is checked again on each load, so a race lost to a bookkeeping
    event goes through, and one lost to a change the client has not seen is StaleVersion.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with transaction.atomic(), personal.key_scope():
                return work()
        except ConcurrencyError:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def create_user(command: CreateUser) -> CommandResult:
    def work() -> CommandResult:
        user = User.create(command.user_id, command.email, command.first_name, command.last_name)
        try:
            result = _save(user)
        except ConcurrencyError:
            raise UserAlreadyExists(command.user_id) from None
        _reserve_email(user.email, user.id)  # a clash rolls the append back
        return result

    with transaction.atomic(), personal.key_scope():
        return work()


def update_user(command: UpdateUser) -> CommandResult:
    def work() -> CommandResult:
        user = _load(command.user_id, command.expected_version)
        old_email = user.email
        user.update(email=command.email, first_name=command.first_name, last_name=command.last_name)
        # The append first: it locks the stream row, so concurrent writers of this user
        # move the reservation one after the other (a loser conflicts here and retries).
        result = _save(user)
        if user.email != old_email:
            EmailReservation.objects.filter(user_id=user.id).delete()
            _reserve_email(user.email, user.id)
        return result

    return _retrying(work)


def delete_user(command: DeleteUser) -> CommandResult:
    def work() -> CommandResult:
        user = _load(command.user_id, command.expected_version)
        user.delete()
        EmailReservation.objects.filter(user_id=user.id).delete()
        return _save(user)

    return _retrying(work)


def welcome_user(command: WelcomeUser) -> CommandResult:
    def work() -> CommandResult:
        user = _load(command.user_id)
        user.welcome(timezone.now())
        return _save(user)

    return _retrying(work)


def erase_user(command: EraseUser) -> CommandResult:
    """Forget the user: destroy their key, drop every derived copy, record ``UserErased``.

    Idempotent: erasing again destroys nothing more and records nothing. The read model
    row is blanked by the projection when it handles ``UserErased``. Logs name the id.
    """

    def work() -> CommandResult:
        # The stream row's lock before the load: concurrent writers of this user wait for
        # the erasure (and are then refused), so a burst of updates cannot make it give up.
        list(
            Stream.objects.select_for_update().filter(stream_id=User.stream_id_for(command.user_id))
        )
        user = _load(command.user_id)
        user.erase()
        result = _save(user)
        subject = str(user.id)
        personal.erase_subject(subject)
        EmailReservation.objects.filter(user_id=user.id).delete()
        # A stored POST response replays the user as created (email and names), and its
        # request hash is one of their data. Scrubbed, not deleted: a repeat of that POST
        # is still refused (422) rather than creating the person again.
        IdempotentRequest.objects.filter(body__id=subject).update(
            body={"id": subject, "status": "erased"}, request_hash=""
        )
        personal.subject_erased.send(sender=User, subject=subject)
        return result

    result = _retrying(work)
    logger.info("user %s erased (version %s)", command.user_id, result.version)
    return result


HANDLERS: dict[type, Callable[[Any], CommandResult]] = {
    CreateUser: create_user,
    UpdateUser: update_user,
    DeleteUser: delete_user,
    WelcomeUser: welcome_user,
    EraseUser: erase_user,
}


def handle(command: Command) -> CommandResult:
    """Run the one handler of ``command``'s type."""
    try:
        return HANDLERS[type(command)](command)
    except personal.SubjectErased:  # the key is gone (erasure on a keys database of its own)
        raise UserIsErased(command.user_id) from None
