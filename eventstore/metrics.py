"""Prometheus metrics of the event store: events appended (counted after they commit),
subscriber errors, and, read at scrape time, each subscriber partition's position, lag
(in events and in seconds) and parked streams.

Labels carry subscriber names, partition numbers, categories and event types: never a
stream id or anything of a person.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connection
from django.dispatch import receiver
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventstore import progress
from eventstore.signals import events_appended
from eventstore.store import category_of

EVENTS_APPENDED = Counter(
    "eventstore_events_appended",
    "Events appended and committed, by stream category and event type.",
    ["category", "event_type"],
)
SUBSCRIBER_ERRORS = Counter(
    "eventstore_subscriber_errors",
    "Subscriber failures by partition: 'batch' (a batch failed and was redone event by "
    "event), 'parked' (a stream was parked at an event it could not decode or handle).",
    ["subscriber", "partition", "kind"],
)


def enabled() -> bool:
    return bool(getattr(settings, "METRICS_ENABLED", True))


@receiver(events_appended, dispatch_uid="eventstore.metrics.count_appended")
def count_appended(sender: Any, stream_id: str, event_types: list[str], **kwargs: Any) -> None:
    if not enabled():
        return
    category = category_of(stream_id)
    for event_type in event_types:
        EVENTS_APPENDED.labels(category, event_type).inc()


def subscriber_error(name: str, partition: int, kind: str, count: int = 1) -> None:
    if count and enabled():
        SUBSCRIBER_ERRORS.labels(name, str(partition), kind).inc(count)


# The checkpoint's cursor may sit between events (at the feed's horizon), so the position
# reported is that of the last event of the partition's feed at or before it.
_PARTITIONS_SQL = f"""
    SELECT c.name, c.partition,
           coalesce((SELECT e.position FROM events e
                      WHERE (e.transaction_id, e.position)
                            <= (c.cursor_transaction_id, c.cursor_position)
                        AND (c.partitions = 1 OR mod(e.bucket, c.partitions) = c.partition)
                      ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1), 0),
           c.events_processed,
           {progress.LAG_SQL}, coalesce({progress.LAG_SECONDS_SQL}, 0),
           (SELECT count(*) FROM parked_streams p
             WHERE p.subscriber = c.name AND p.partition = c.partition)
      FROM checkpoints c ORDER BY c.name, c.partition
"""


class SubscriberCollector(Collector):
    """Each subscriber partition as its checkpoint row says, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        labels = ["subscriber", "partition"]
        position = GaugeMetricFamily(
            "eventstore_subscriber_position",
            "Global position of the last event of the partition's feed its checkpoint has "
            "passed (0: none yet).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "eventstore_subscriber_lag_events",
            "Events in the partition's feed after its checkpoint.",
            labels=labels,
        )
        lag_seconds = GaugeMetricFamily(
            "eventstore_subscriber_lag_seconds",
            "Age of the oldest event after the partition's checkpoint (0 when none).",
            labels=labels,
        )
        parked = GaugeMetricFamily(
            "eventstore_subscriber_parked_streams",
            "Streams the partition has parked (waiting for a retry or an operator).",
            labels=labels,
        )
        processed = CounterMetricFamily(
            "eventstore_subscriber_events_processed",
            "Events the partition has handled since its checkpoint was made (or replayed).",
            labels=labels,
        )
        with connection.cursor() as cursor:
            cursor.execute(_PARTITIONS_SQL)
            rows = cursor.fetchall()
        for name, partition, cursor_position, done, behind, age, parked_count in rows:
            values = [name, str(partition)]
            position.add_metric(values, cursor_position)
            lag.add_metric(values, behind)
            lag_seconds.add_metric(values, age)
            parked.add_metric(values, parked_count)
            processed.add_metric(values, done)
        yield from (position, lag, lag_seconds, parked, processed)
