"""Tables of the event store: streams, the append-only events, subscriber checkpoints.

Rows here are written only by :mod:`eventstore.store` and the subscription engine; the
ORM models exist for reads (admin, feeds) and migrations. The events table is
protected by a trigger (see migration 0002) against UPDATE, DELETE and TRUNCATE.
"""

from django.db import models
from django.db.models.functions import Now

from eventstore.fields import TransactionIdField


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
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}@{self.version} {self.event_type}"


class Checkpoint(models.Model):
    """Where one subscriber is in the gap-safe feed, and why it stopped if it did."""

    name = models.TextField(primary_key=True)
    kind = models.TextField(default="projection")
    cursor_transaction_id = TransactionIdField(default=0)
    cursor_position = models.BigIntegerField(default=0)
    events_processed = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())
    last_event_at = models.DateTimeField(null=True, blank=True)
    wake_requested = models.BooleanField(
        default=False, help_text="Set by a wake-up that found the subscriber busy."
    )
    error = models.TextField(blank=True, default="")
    error_position = models.BigIntegerField(null=True, blank=True)
    error_count = models.IntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "checkpoints"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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
