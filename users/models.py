"""Tables of the users context.

``UserRecord`` is the read model: written only by :mod:`users.projections`, rebuilt
from the events by ``replay_projections``. ``EmailReservation`` belongs to the write
side: handlers reserve a normalised email in the same transaction as the append, which
is how a rule spanning many aggregates (one user per email) holds under concurrency. It
holds a keyed hash of the address, never the address (an erased user leaves nothing).
``ApiToken`` and ``IdempotentRequest`` serve the HTTP API.
"""

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from users.aggregate import User


class UserRecord(models.Model):
    """The user list the API queries (one row per user stream)."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        DELETED = "deleted"
        ERASED = "erased"  # personal data forgotten: email and names are blank

    id = models.UUIDField(primary_key=True)
    email = models.TextField()
    first_name = models.TextField()
    last_name = models.TextField()
    status = models.TextField(choices=Status.choices, default=Status.ACTIVE)
    welcomed_at = models.DateTimeField(null=True, blank=True)
    version = models.IntegerField(help_text="Version of the last event projected.")
    last_position = models.BigIntegerField(help_text="Global position of that event.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "users_user"
        verbose_name = "user (read model)"
        verbose_name_plural = "users (read model)"
        ordering = ["-created_at", "id"]
        indexes = [
            models.Index(fields=["email"], name="users_user_email_idx"),
            models.Index(fields=["status", "-created_at"], name="users_user_status_idx"),
            models.Index(fields=["-created_at", "id"], name="users_user_created_idx"),
            models.Index(fields=["last_name", "first_name"], name="users_user_name_idx"),
        ]
        permissions = [
            ("erase_user", "Can erase a user's personal data"),
            ("export_user", "Can export everything stored about a user"),
        ]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name} <{self.email}>"

    @property
    def stream_id(self) -> str:
        return User.stream_id_for(self.id)


class EmailReservation(models.Model):
    """One row per email in use; the unique key is what makes emails unique.

    ``email_hash`` is the keyed hash (:func:`eventstore.personal.keyed_hash`) of the
    normalised address: equal addresses clash, and the table holds no address.
    """

    email_hash = models.TextField(primary_key=True)
    user_id = models.UUIDField(unique=True)
    reserved_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "users_email_reservation"

    def __str__(self) -> str:
        return self.email_hash


class ApiToken(models.Model):
    """A bearer token of an API client. Only its SHA-256 is stored."""

    class Scope(models.TextChoices):
        READ_WRITE = "read-write", "read and write"
        READ = "read", "read only (GET, HEAD, OPTIONS)"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="api_tokens",
        verbose_name="owner",
        help_text="The token acts as this user, with their permissions.",
    )
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart.")
    scope = models.CharField(
        max_length=10,
        choices=Scope.choices,
        default=Scope.READ_WRITE,
        help_text="What the token may do; a read-only token is refused every write (403).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="Updated at most once a minute."
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="The token stops working then; empty: never."
    )

    class Meta:
        db_table = "users_api_token"
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def read_only(self) -> bool:
        return self.scope == self.Scope.READ


class IdempotentRequest(models.Model):
    """The first response to a POST with an ``Idempotency-Key``, replayed for repeats."""

    client = models.TextField()
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField()
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "users_idempotent_request"
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="users_idempotency_key_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.client}:{self.key}"
