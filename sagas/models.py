"""Saga state: one row per saga instance, written by its subscriber and its steps; and
the mail cooldowns the steps keep."""

from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models.functions import Now


class SagaInstance(models.Model):
    """Where one run of a saga is, what it handled and issued, and why it failed if so."""

    class Status(models.TextChoices):
        STARTED = "started"
        WAITING = "waiting"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    OPEN = (Status.STARTED, Status.WAITING)

    saga_type = models.CharField(max_length=100)
    correlation_key = models.CharField(
        max_length=200, help_text="What the instance is about (for a user's saga: the user id)."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STARTED)
    step = models.CharField(max_length=50, help_text="The next thing the saga will do.")
    attempts = models.PositiveIntegerField(default=0, help_text="Failed tries of the step.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    handled_events = models.JSONField(default=list, help_text="Ids of the events handled.")
    issued_commands = models.JSONField(default=list, help_text="Ids of the commands issued.")
    data = models.JSONField(
        default=dict,
        help_text="What the steps need and did: ids and times, never personal data (the "
        "steps read that when they need it).",
    )
    started_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "sagas_instance"
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["saga_type", "correlation_key"], name="sagas_one_per_key"
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="sagas_due_idx"),
            # "Which saga handled this event?" (the admin's event page): jsonb @> lookups.
            GinIndex(
                fields=["handled_events"],
                name="sagas_handled_events_idx",
                opclasses=["jsonb_path_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.correlation_key} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN


class MailCooldown(models.Model):
    """When a message of one purpose last went to one address (by a keyed hash of it)."""

    key = models.CharField(
        max_length=64, primary_key=True, help_text="HMAC of purpose and address."
    )
    sent_at = models.DateTimeField()

    class Meta:
        db_table = "sagas_mail_cooldown"

    def __str__(self) -> str:
        return self.key
