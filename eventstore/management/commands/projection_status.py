"""Where every subscriber is: each partition's cursor and lag, activity, parked streams."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from eventstore import status


class Command(BaseCommand):
    help = (
        "Show each subscriber and its partitions: cursor, lag (events, and the age of the "
        "oldest event not yet handled), events processed, last activity, parked streams."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="machine-readable, with the parked streams"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        entries = status.subscriber_status(parked_details=options["json"])
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2, default=str))
            return
        headers = ["subscriber", "kind", "cursor", "lag", "lag age", "processed",
                   "last activity", "parked", "state"]  # fmt: skip
        table = []
        for entry in entries:
            table.append(_line(entry["name"], entry["kind"], "", entry, entry["state"]))
            if len(entry["partition_rows"]) > 1:
                for row in entry["partition_rows"]:
                    table.append(_line(f"  [{row['partition']}]", "", row["cursor"], row, ""))
            elif entry["partition_rows"]:
                table[-1][2] = entry["partition_rows"][0]["cursor"]
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for line in table:
            text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
            bad = line[-1] in ("parked", "repartition needed")
            self.stdout.write(self.style.ERROR(text) if bad else text)
        self.stdout.write(
            "\ncursor: where a partition is in the gap-safe feed, as the admin shows it: "
            "<transaction id> / <position>. Events are read in (transaction id, position) order;"
            " a partition that has read up to the feed's horizon (the oldest transaction still "
            "running) stands at (that id, 0).\nlag: events after the cursor; lag age: how long "
            "the oldest of "
            "them has waited. parked: streams set aside at an event the subscriber could not "
            "handle ('manage.py parked list')."
        )


def _line(name: str, kind: str, cursor: str, row: dict[str, Any], state: str) -> list[str]:
    age = row["lag_seconds"]
    return [
        name,
        kind,
        cursor,
        "-" if row["lag"] is None else str(row["lag"]),
        "-" if age is None else f"{age:.1f}s",
        str(row["events_processed"]),
        row["updated_at"].strftime("%Y-%m-%d %H:%M:%S %Z") if row["updated_at"] else "never",
        str(row["parked"]),
        state,
    ]
