"""Print everything stored about a user as one JSON document (see users/export.py)."""

import json
import uuid
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from users.errors import UserNotFound
from users.export import export_user


class Command(BaseCommand):
    help = (
        "Export everything stored about USER_ID (profile, decrypted events with metadata, "
        "saga state, emails sent, API tokens by prefix) as JSON, to stdout or --output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user_id")
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user_id = uuid.UUID(options["user_id"])
        except ValueError:
            raise CommandError(f"{options['user_id']!r} is not a user id (a UUID)") from None
        try:
            document = export_user(user_id)
        except UserNotFound as exc:
            raise CommandError(str(exc)) from None
        text = json.dumps(document, indent=2, ensure_ascii=False)
        if options["output"]:
            Path(options["output"]).write_text(text + "\n", encoding="utf-8")
            self.stderr.write(f"wrote {len(document['events'])} events to {options['output']}")
        else:
            self.stdout.write(text)
