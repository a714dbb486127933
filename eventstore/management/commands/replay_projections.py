"""Rebuild projections' read models from the first event."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from eventstore import replay, subscribers
from eventstore.subscribers import Projection


class Command(BaseCommand):
    help = (
        "Rebuild read models from the events, aside, then swap them in. Readers keep the "
        "old rows until the swap; Ctrl-C leaves them untouched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="projection names")
        parser.add_argument("--all", action="store_true", help="every projection")
        parser.add_argument("--batch-size", type=int, default=2000, help="events per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        projections = [s for s in subscribers.all_subscribers() if isinstance(s, Projection)]
        if options["all"]:
            chosen = projections
        elif options["names"]:
            by_name = {p.name: p for p in projections}
            unknown = [n for n in options["names"] if n not in by_name]
            if unknown:
                known = ", ".join(sorted(by_name)) or "none"
                raise CommandError(f"not a projection: {', '.join(unknown)} (known: {known})")
            chosen = [by_name[n] for n in options["names"]]
        else:
            raise CommandError("name the projections to replay, or pass --all")
        if not 1 <= options["batch_size"] <= 100_000:
            raise CommandError("--batch-size must be between 1 and 100000")

        for projection in chosen:
            total = replay.count_events(projection)
            bar = tqdm(
                total=total,
                desc=projection.name,
                unit="ev",
                unit_scale=total >= 10_000,
                file=self.stderr._out,
                disable=options["verbosity"] == 0,
            )
            try:
                result = replay.replay(
                    projection, batch_size=options["batch_size"], progress=bar.update
                )
            except KeyboardInterrupt:
                bar.close()
                raise CommandError(
                    f"{projection.name}: interrupted; the live read model is untouched"
                ) from None
            except replay.ReplayInProgress as exc:
                bar.close()
                raise CommandError(str(exc)) from None
            bar.close()
            rows = ", ".join(f"{table}: {count} rows" for table, count in result.rows.items())
            self.stdout.write(
                self.style.SUCCESS(f"{projection.name}: {result.events} events replayed ({rows})")
            )
