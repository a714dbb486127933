"""What saga rows hold about a person: dropped when they are erased, listed in an export.

Saga rows are keyed by their data subject (``correlation_key``: the user id). Receivers
of :mod:`eventstore.personal`'s signals, connected in ``SagasConfig.ready``.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver
from django.utils import timezone

from eventstore import personal
from sagas.models import SagaInstance

# Values of a person that saga data held in older releases (it holds none now: the steps
# read them when they need them); dropped from any row that still has them.
PERSONAL_KEYS = ("email", "first_name", "last_name")


@receiver(personal.subject_erased, dispatch_uid="sagas.personal.forget")
def forget(sender: Any, subject: str, **kwargs: Any) -> None:
    """Inside the erasing transaction: cancel the person's open sagas (nothing more is
    sent to an erased person) and drop the personal values and errors their rows hold.
    Cancelling changes the status, so a step running meanwhile cannot save its state."""
    now = timezone.now()
    for instance in SagaInstance.objects.select_for_update().filter(correlation_key=subject):
        instance.data = {k: v for k, v in instance.data.items() if k not in PERSONAL_KEYS}
        instance.last_error = ""
        if instance.is_open:
            instance.status = SagaInstance.Status.CANCELLED
            instance.last_error = "the user was erased"
            instance.next_attempt_at = None
            instance.finished_at = now
        instance.updated_at = now
        instance.save(
            update_fields=[
                "data", "last_error", "status", "next_attempt_at", "finished_at", "updated_at",
            ]
        )  # fmt: skip


@receiver(personal.subject_exported, dispatch_uid="sagas.personal.export")
def export(sender: Any, subject: str, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    """The person's saga rows, and the emails they record as sent."""
    sagas, emails = [], []
    for instance in SagaInstance.objects.filter(correlation_key=subject).order_by("started_at"):
        sagas.append(
            {
                "saga_type": instance.saga_type,
                "status": instance.status,
                "step": instance.step,
                "attempts": instance.attempts,
                "last_error": instance.last_error,
                "started_at": _iso(instance.started_at),
                "updated_at": _iso(instance.updated_at),
                "finished_at": _iso(instance.finished_at),
                "data": instance.data,
            }
        )
        if instance.data.get("email_sent_at"):
            emails.append(
                {
                    "sent_at": instance.data["email_sent_at"],
                    "template": instance.data.get("template", f"sagas/{instance.saga_type}_email"),
                    "saga_type": instance.saga_type,
                }
            )
    return {"sagas": sagas, "emails_sent": emails}


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment else None
