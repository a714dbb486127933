"""Tables of the event store: streams, the append-only events, subscriber checkpoints,
and the streams a subscriber has parked.

Rows here are written only by :mod:`eventstore.store` and the subscription engine; the
ORM models exist for reads (admin, feeds) and migrations. The events table is
protected by a trigger (see migration 0002) against UPDATE, DELETE and TRUNCATE.
"""

from django.db import models
from django.db.models import Func
from django.db.models.functions import Now

from eventstore.fields import TransactionIdField
from eventstore.partitions import BUCKETS


class StreamBucket(Func):
    """The stream's bucket (:mod:`eventstore.partitions` computes the same in Python)."""

    template = f"mod(get_byte(decode(md5(%(expressions)s), 'hex'), 0), {BUCKETS})"
    output_field = models.SmallIntegerField()


class Stream(models.Model):
    """One row per stream, updated in the same transaction as every append to it."""

    stream_id = models.TextField(primary_key=True)
    category = models.TextField()
    version = models.IntegerField(help_text="Version of the stream's last event (first is 0).")
    last_transaction_id = TransactionIdField(
        null=True, blank=True, help_text="transaction_id stored with the stream's last event."
    )
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "streams"
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["category", "-updated_at"], name="streams_category_idx"),
            models.Index(fields=["-updated_at"], name="streams_updated_idx"),
        ]

    def __str__(self) -> str:
        return self.stream_id


class Event(models.Model):
    """A stored event. ``(stream, version)`` is unique: that constraint is the optimistic lock."""

    position = models.BigAutoField(primary_key=True)
    transaction_id = TransactionIdField(
        help_text="xid8 of the writing transaction, or of the stream's previous event if "
        "higher; the feed orders by (transaction_id, position)."
    )
    stream = models.ForeignKey(
        Stream,
        on_delete=models.DO_NOTHING,
        db_column="stream_id",
        db_index=False,  # (stream_id, version) is unique, so that index serves
        related_name="events",
    )
    version = models.IntegerField()
    category = models.TextField()
    event_id = models.UUIDField(unique=True)
    event_type = models.TextField()
    schema_version = models.SmallIntegerField(db_default=1)
    data = models.JSONField()
    metadata = models.JSONField()
    recorded_at = models.DateTimeField(db_default=Now())
    bucket = models.GeneratedField(
        expression=StreamBucket("stream_id"),
        output_field=models.SmallIntegerField(),
        db_persist=True,
        help_text="Which partitions of a subscriber read the event (eventstore.partitions).",
    )

    class Meta:
        db_table = "events"
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(
                fields=["stream", "version"], name="events_stream_version_uniq"
            ),
            models.CheckConstraint(condition=models.Q(version__gte=0), name="events_version_gte_0"),
        ]
        indexes = [
            models.Index(fields=["transaction_id", "position"], name="events_feed_idx"),
            models.Index(
                fields=["category", "transaction_id", "position"], name="events_category_feed_idx"
            ),
            models.Index(fields=["event_type", "position"], name="events_type_idx"),
            models.Index(fields=["recorded_at"], name="events_recorded_at_idx"),
            models.Index(
                fields=["bucket", "transaction_id", "position"], name="events_bucket_feed_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}@{self.version} {self.event_type}"


class Checkpoint(models.Model):
    """Where one partition of a subscriber is in the gap-safe feed."""

    name = models.TextField(help_text="The subscriber.")
    partition = models.SmallIntegerField(default=0)
    partitions = models.SmallIntegerField(
        default=1, help_text="How many partitions the subscriber had when this row was made."
    )
    kind = models.TextField(default="projection")
    cursor_transaction_id = TransactionIdField(default=0)
    cursor_position = models.BigIntegerField(default=0)
    events_processed = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())
    last_event_at = models.DateTimeField(null=True, blank=True)
    wake_requested = models.BooleanField(
        default=False, help_text="Set by a wake-up that found the partition busy."
    )

    class Meta:
        db_table = "checkpoints"
        ordering = ["name", "partition"]
        # The admin calls the rows what they are to operators: subscribers' positions.
        verbose_name = "subscriber"
        verbose_name_plural = "subscribers"
        # Scraping /metrics (config/metrics.py) shows every subscriber's progress and more.
        permissions = [("view_metrics", "Can read the service's metrics (/metrics)")]
        constraints = [
            models.UniqueConstraint(fields=["name", "partition"], name="checkpoints_partition_uniq")
        ]

    def __str__(self) -> str:
        return self.name if self.partitions == 1 else f"{self.name} [{self.partition}]"


class ParkedStream(models.Model):
    """A stream a subscriber set aside at an event it could not decode or handle.

    That event and every later event of the stream wait, in order, for this subscriber
    alone, until a retry handles them or an operator skips the first one.
    """

    subscriber = models.TextField()
    partition = models.SmallIntegerField()
    stream_id = models.TextField()
    cursor_transaction_id = TransactionIdField(help_text="Where the first waiting event is.")
    cursor_position = models.BigIntegerField()
    event_id = models.UUIDField(help_text="The first waiting event.")
    event_type = models.TextField()
    version = models.IntegerField()
    error = models.TextField()
    attempts = models.IntegerField(default=1, help_text="Failed tries of the first event.")
    retry_at = models.DateTimeField(
        null=True, blank=True, help_text="Next automatic retry; empty: waits for an operator."
    )
    parked_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "parked_streams"
        ordering = ["-parked_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "stream_id"], name="parked_streams_stream_uniq"
            )
        ]
        indexes = [models.Index(fields=["subscriber", "partition"], name="parked_partition_idx")]

    def __str__(self) -> str:
        return f"{self.stream_id} (parked by {self.subscriber})"


class SkippedEvent(models.Model):
    """An event an operator told a subscriber to skip: who, when and why."""

    subscriber = models.TextField()
    stream_id = models.TextField()
    event_id = models.UUIDField()
    event_type = models.TextField()
    version = models.IntegerField()
    position = models.BigIntegerField()
    error = models.TextField(help_text="Why the subscriber could not handle it.")
    reason = models.TextField(help_text="Why the operator skipped it.")
    skipped_by = models.TextField()
    skipped_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "skipped_events"
        ordering = ["-skipped_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "event_id"], name="skipped_events_event_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}@{self.version} skipped by {self.subscriber}"


class PersonalKey(models.Model):
    """One data subject's key, wrapped by a master key; no key once they are erased.

    Written only by :mod:`eventstore.personal`. It may live in a database of its own
    (``PERSONAL_KEYS_DATABASE_URL``; :class:`eventstore.routers.PersonalKeysRouter`).
    """

    subject = models.TextField(primary_key=True)
    wrapped_key = models.BinaryField(
        null=True, blank=True, help_text="Nonce and AES-GCM ciphertext; NULL once erased."
    )
    master_key_id = models.TextField(blank=True, default="", help_text="Which master key wraps it.")
    created_at = models.DateTimeField(db_default=Now())
    erased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "personal_keys"
        verbose_name = "personal data key"

    def __str__(self) -> str:
        return self.subject
