"""Issue a bearer token for an API client."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from users.authentication import issue_token


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME and print it once, alone on the last line. "
        "Only its hash is stored: keep the printed token safe."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label, e.g. the client's name")
        parser.add_argument(
            "--create-user", action="store_true", help="create the (non-staff) user if missing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        username = options["username"]
        user = User.objects.filter(username=username).first()
        if user is None:
            if not options["create_user"]:
                raise CommandError(f"no user {username!r}; create it first or pass --create-user")
            user = User.objects.create_user(username=username)
            self.stdout.write(f"created user {username!r} (no password, not staff)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        record, token = issue_token(user, options["name"])
        self.stdout.write(
            f"token {record.prefix}… for {username!r}; use 'Authorization: Bearer <token>'"
        )
        self.stdout.write(token)
