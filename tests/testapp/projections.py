"""A projection of the shape of the real ones (one upsert per event), for engine tests.

Switches (rows in ``testapp_switch``, so worker processes see them too): ``fail`` makes
the handler raise on events whose text is "boom"; ``slow`` makes it sleep on "slow".
Worker processes take ``TALLY_BATCH_SIZE``, ``TALLY_PARTITIONS`` and ``TALLY_SLOW_SECONDS``
from their environment.
"""

import os
import time

from django.db import connection

from eventstore.reads import RecordedEvent
from eventstore.subscribers import Projection, handles
from tests.events import Noted
from tests.testapp.models import BatchLog, Tally, switch_is_on


class TallyProjection(Projection):
    name = "test-tally"
    read_models = [Tally]
    batch_size = int(os.environ.get("TALLY_BATCH_SIZE", "100"))
    partitions = int(os.environ.get("TALLY_PARTITIONS", "1"))

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        started = time.time()
        super().handle_batch(events)
        if os.environ.get("TALLY_LOG_BATCHES"):  # committed with the batch, or not at all
            BatchLog.objects.create(
                pid=os.getpid(), started=started, finished=time.time(), events=len(events)
            )

    @handles(Noted)
    def noted(self, event: RecordedEvent) -> None:
        if event.data.text == "boom" and switch_is_on("fail"):
            raise RuntimeError(f"cannot tally {event.event_id}")
        if event.data.text == "slow" and switch_is_on("slow"):
            time.sleep(float(os.environ.get("TALLY_SLOW_SECONDS", "0.5")))
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO testapp_tally (stream_id, count, total, last_version)
                VALUES (%s, 1, %s, %s)
                ON CONFLICT (stream_id) DO UPDATE
                SET count = testapp_tally.count + 1,
                    total = testapp_tally.total + EXCLUDED.total,
                    last_version = EXCLUDED.last_version
                """,
                [event.stream_id, event.data.n, event.version],
            )
