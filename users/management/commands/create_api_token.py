"""Issue a bearer token for an API client."""

import re
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from users.authentication import issue_token

_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# What the event feed and stream endpoints (and the admin's event pages) ask for.
EVENT_READER_PERMISSIONS = ["view_event", "view_stream"]


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``3600s``, ``2w``."""
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise CommandError(
            f"--expires-in {text!r}: give a positive number and a unit: s, m, h, d or w "
            "(e.g. 90d, 12h)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME and print it once, alone on the last line. "
        "Only its hash is stored: keep the printed token safe. Revoke it in the admin "
        "(Users > API tokens)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label, e.g. the client's name")
        parser.add_argument(
            "--create-user", action="store_true", help="create the (non-staff) user if missing"
        )
        parser.add_argument(
            "--expires-in",
            metavar="DURATION",
            help="the token stops working after this long: 90d, 12h, 30m, 3600s, 2w "
            "(default: never)",
        )
        parser.add_argument(
            "--read-only",
            action="store_true",
            help="the token may only read (GET); every write is refused with 403",
        )
        parser.add_argument(
            "--event-reader",
            action="store_true",
            help="make the user staff with permission to read events (eventstore.view_event "
            "and view_stream), as GET /v1/events and /v1/streams/{id} require",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        username = options["username"]
        lifetime = parse_duration(options["expires_in"]) if options["expires_in"] else None
        user = User.objects.filter(username=username).first()
        if user is None:
            if not options["create_user"]:
                raise CommandError(f"no user {username!r}; create it first or pass --create-user")
            user = User.objects.create_user(username=username)
            self.stdout.write(f"created user {username!r} (no password, not staff)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        if options["event_reader"]:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
            user.user_permissions.add(
                *Permission.objects.filter(
                    content_type__app_label="eventstore",
                    codename__in=EVENT_READER_PERMISSIONS,
                )
            )
            self.stdout.write(f"{username!r} is staff and may read events")
        expires_at = timezone.now() + lifetime if lifetime else None
        record, token = issue_token(
            user, options["name"], expires_at=expires_at, read_only=options["read_only"]
        )
        details = [record.get_scope_display()]
        if expires_at:
            details.append(f"expires {expires_at:%Y-%m-%d %H:%M:%S %Z}")
        self.stdout.write(
            f"token {record.prefix}… for {username!r} ({', '.join(details)}); "
            "use 'Authorization: Bearer <token>'"
        )
        self.stdout.write(token)
