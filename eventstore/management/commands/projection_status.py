"""Where every subscriber is: position, lag, last activity and last error."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from eventstore import status


class Command(BaseCommand):
    help = "Show each subscriber's position, lag in events, last activity and last error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = status.subscriber_status()
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2, default=str))
            return
        headers = ["name", "kind", "position", "lag", "processed", "last activity", "error"]
        table = [
            [
                row["name"],
                row["kind"],
                str(row["position"]),
                str(row["lag"]),
                str(row["events_processed"]),
                row["updated_at"].strftime("%Y-%m-%d %H:%M:%S") if row["updated_at"] else "never",
                _error_text(row),
            ]
            for row in rows
        ]
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for line in table:
            text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
            self.stdout.write(self.style.ERROR(text) if line[-1] != "-" else text)


def _error_text(row: dict[str, Any]) -> str:
    if not row["error"]:
        return "-"
    return f"at position {row['error_position']} (x{row['error_count']}): {row['error']}"[:120]
