"""Catch subscribers up without Celery: once, or following the feed."""

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventstore import operations, subscribers, subscriptions


class Command(BaseCommand):
    help = (
        "Process all (or the named) subscribers, every partition, until caught up; "
        "--follow keeps going."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="subscriber names (default: all)")
        parser.add_argument("--follow", action="store_true", help="keep following the feed")
        parser.add_argument(
            "--interval", type=float, default=0.5, help="seconds between polls with --follow"
        )
        parser.add_argument(
            "--retry-now", action="store_true", help="retry their parked streams first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            chosen = [subscribers.get(n) for n in options["names"]] or (
                subscribers.all_subscribers()
            )
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        if options["interval"] <= 0:
            raise CommandError("--interval must be positive")
        if options["retry_now"]:
            for subscriber in chosen:
                done, left = operations.retry_all_parked(subscriber.name)
                if done or left:
                    self.stdout.write(
                        f"{subscriber.name}: {done} parked stream(s) handled, {left} still parked"
                    )
        try:
            while True:
                for subscriber in chosen:
                    result = subscriptions.catch_up(subscriber)
                    if result.processed or result.parked or result.stopped != "caught_up":
                        parked = f", {result.parked} stream(s) parked" if result.parked else ""
                        self.stdout.write(
                            f"{subscriber.name}: {result.processed} events{parked}, "
                            f"{result.stopped}"
                        )
                if not options["follow"]:
                    return
                time.sleep(options["interval"])
        except KeyboardInterrupt:
            self.stdout.write("stopped; every committed batch is kept")
