"""The projection of bench/partitions.py: its handler waits per event, standing in for a
call to another service. Registered only under ``bench/partitions_settings.py``.

Its effect, one upsert per batch into ``bench_slow`` (a table the benchmark makes), holds
per stream how many events it saw and whether they came in version order, so the
benchmark can check that every event took effect once and in order.
"""

from __future__ import annotations

import os
import time

from django.apps import AppConfig
from django.db import connection

from eventstore.reads import RecordedEvent
from eventstore.subscribers import Projection, handles
from tests.events import Noted

HANDLER_SECONDS = float(os.environ.get("BENCH_HANDLER_SECONDS", "0.005"))


class SlowProjection(Projection):
    name = "bench-slow"

    @handles(Noted)
    def noted(self, event: RecordedEvent) -> None:
        time.sleep(HANDLER_SECONDS)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        super().handle_batch(events)
        streams: dict[str, list[int]] = {}
        for event in events:
            streams.setdefault(event.stream_id, []).append(event.version)
        rows = [
            (s, len(v), v[0], v[-1], v == list(range(v[0], v[-1] + 1))) for s, v in streams.items()
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO bench_slow (stream_id, count, first_version, last_version, in_order)
                SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[], %s::bool[])
                ON CONFLICT (stream_id) DO UPDATE SET
                    count = bench_slow.count + EXCLUDED.count,
                    last_version = EXCLUDED.last_version,
                    in_order = bench_slow.in_order AND EXCLUDED.in_order
                        AND bench_slow.last_version + 1 = EXCLUDED.first_version
                """,
                [list(col) for col in zip(*rows, strict=True)],
            )


class SlowProjectionApp(AppConfig):
    name = "slow_projection"
    label = "bench_slow"

    def ready(self) -> None:
        from eventstore import subscribers

        subscribers.register(SlowProjection())
