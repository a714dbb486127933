"""Forget a user's personal data: destroy their key, drop every copy, record UserErased."""

import sys
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventstore import progress, subscribers
from eventstore.context import message_context
from users import handlers
from users.commands import EraseUser
from users.errors import UserNotFound
from users.projections import UserListProjection


class Command(BaseCommand):
    help = (
        "Erase USER_ID's personal data for good: their email and names in every event read "
        "as erased, and the read model, email reservation, stored responses and saga rows "
        "drop them. Irreversible; erasing again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user_id")
        parser.add_argument(
            "--noinput", "--no-input", action="store_true", help="do not ask for confirmation"
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=10.0,
            help="seconds to wait for the read model to drop the user (default 10)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user_id = uuid.UUID(options["user_id"])
        except ValueError:
            raise CommandError(f"{options['user_id']!r} is not a user id (a UUID)") from None
        if not options["noinput"]:
            if not sys.stdin.isatty():
                raise CommandError("no terminal to confirm on: pass --noinput to erase")
            answer = input(f"Erase the personal data of user {user_id} for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("nothing erased")
        with message_context(actor="manage.py erase_user"):
            try:
                result = handlers.handle(EraseUser(user_id=user_id))
            except UserNotFound as exc:
                raise CommandError(str(exc)) from None
        if result.position is None:
            self.stdout.write(f"user {user_id} was erased already; nothing changed")
            return
        self.stdout.write(f"user {user_id} erased: UserErased at position {result.position}")
        timeout = max(0.0, options["wait"])
        name = UserListProjection.name
        if progress.wait_until_processed(subscribers.get(name), result.position, timeout=timeout):
            self.stdout.write("the read model has dropped their data")
        else:
            self.stderr.write(
                f"the {name!r} projection has not reached position {result.position} yet "
                f"(worker running? see projection_status); it drops their data when it does"
            )
