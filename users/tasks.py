"""Celery tasks of the users context."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from users.models import IdempotentRequest


@shared_task(name="users.tasks.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys() -> int:
    """Forget stored POST responses older than IDEMPOTENCY_KEY_TTL_HOURS (hourly, beat)."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return deleted
