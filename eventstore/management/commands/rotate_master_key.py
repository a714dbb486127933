"""Re-wrap every person key under the newest master key, so older ones can be retired."""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventstore import key_rotation, personal


class Command(BaseCommand):
    help = (
        "Re-wrap every person key under the first key of PERSONAL_DATA_MASTER_KEYS. Put the "
        "new master key first, keep the old ones listed, run this, then remove the old ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="keys per transaction (default 1000)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            current = personal.master_keys().current
            rewrapped = key_rotation.rotate_master_key(batch_size=options["batch_size"])
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"re-wrapped {rewrapped} person keys under master key {current}")
        counts = key_rotation.keys_by_master()
        others = {master: n for master, n in counts.items() if master != current}
        if others:  # appends of an older release meanwhile: run again
            raise CommandError(f"keys still wrapped by other master keys: {others}; run it again")
        self.stdout.write(
            f"all {counts.get(current, 0)} person keys are wrapped by {current}; the other "
            "master keys can be removed from PERSONAL_DATA_MASTER_KEYS"
        )
