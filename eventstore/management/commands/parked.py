"""Streams a subscriber has parked: list them, retry them after a fix, or skip an event."""

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventstore import operations, parking, subscribers
from eventstore.models import ParkedStream


class Command(BaseCommand):
    help = (
        "List parked streams, retry one after a fix, or skip its first waiting event with a "
        "reason. Example: parked skip users user-3f2c... --reason 'bad import, see #42'"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="parked streams, oldest first")
        listing.add_argument("subscriber", nargs="?")
        retry = sub.add_parser("retry", help="handle a parked stream's waiting events now")
        retry.add_argument("subscriber")
        retry.add_argument("stream_id")
        skip = sub.add_parser("skip", help="skip the first waiting event, then retry the rest")
        skip.add_argument("subscriber")
        skip.add_argument("stream_id")
        skip.add_argument("--reason", required=True, help="why (recorded with who and when)")
        skip.add_argument("--by", default="", help="who skips it (default: the OS user)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(options["subscriber"])
            return
        name, stream_id = options["subscriber"], options["stream_id"]
        try:
            if action == "retry":
                unparked = operations.retry_parked(name, stream_id)
            else:
                actor = options["by"] or f"{getpass.getuser()} (manage.py)"
                unparked = operations.skip_parked(
                    name, stream_id, reason=options["reason"], actor=actor
                )
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if unparked:
            self.stdout.write(self.style.SUCCESS(f"{name}: {stream_id} is handled again"))
            return
        still = ParkedStream.objects.get(subscriber=name, stream_id=stream_id)
        raise CommandError(
            f"{name}: {stream_id} is still parked at event {still.event_id} "
            f"({still.event_type}, version {still.version}): {still.error}"
        )

    def _list(self, name: str | None) -> None:
        parked = ParkedStream.objects.order_by("parked_at")
        if name:
            try:
                subscribers.get(name)
            except LookupError as exc:
                raise CommandError(str(exc)) from exc
            parked = parked.filter(subscriber=name)
        rows = list(parked)
        if not rows:
            self.stdout.write("no parked streams" + (f" for {name}" if name else ""))
            return
        for subscriber_name in sorted({p.subscriber for p in rows}):
            mine = [p for p in rows if p.subscriber == subscriber_name]
            try:
                waiting = parking.waiting_counts(subscribers.get(subscriber_name), mine)
            except LookupError:
                waiting = {}
            for p in mine:
                retry = p.retry_at.strftime("%H:%M:%S %Z") if p.retry_at else "an operator"
                self.stdout.write(
                    f"{p.subscriber}[{p.partition}]  {p.stream_id}  at version {p.version} "
                    f"({p.event_type}, event {p.event_id}); {waiting.get(p.stream_id, '?')} "
                    f"event(s) wait; tries {p.attempts}; next: {retry}\n    {p.error[:300]}"
                )
