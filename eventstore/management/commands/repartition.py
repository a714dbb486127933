"""Move a subscriber's checkpoints to its configured partition count, safely."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventstore import operations, subscribers


class Command(BaseCommand):
    help = (
        "After changing a subscriber's partition count (SUBSCRIBER_PARTITIONS): catch its "
        "old partitions up to one point, then split the feed there into the new count. "
        "Stop the workers that still run the old count first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="+", help="subscriber names")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            chosen = [subscribers.get(name) for name in options["names"]]
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        for subscriber in chosen:
            try:
                old, new = operations.repartition(subscriber, progress=self.stdout.write)
            except RuntimeError as exc:
                raise CommandError(str(exc)) from exc
            if old == new:
                self.stdout.write(f"{subscriber.name}: already {new} partition(s)")
            else:
                self.stdout.write(
                    self.style.SUCCESS(f"{subscriber.name}: {old} -> {new} partition(s)")
                )
