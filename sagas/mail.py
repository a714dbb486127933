"""Sending mail from saga steps: kept SMTP connections, failures sorted, a relay breaker.

Each thread of the mail pool keeps its SMTP connection open between messages (a TLS
handshake and a login per message would cost more than the message). Failures come out
as the runner's exceptions: a relay that refuses a message for good (5xx) is a
:class:`~sagas.runner.GiveUp`; anything temporary (connection refused, timeout, 4xx) is
an ordinary failure, retried with backoff. While the relay is unreachable, a breaker in
the cache makes every other send wait for the next probe instead of trying on its own,
so an outage costs a handful of connection attempts, not one per pending email.
"""

from __future__ import annotations

import logging
import random
import smtplib
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.db import connection
from django.utils import timezone

from eventstore import personal, tracing
from sagas import metrics
from sagas.models import MailCooldown
from sagas.runner import GiveUp, Retry

logger = logging.getLogger(__name__)

BREAKER_KEY = "sagas:mail:relay-down"
PROBE_KEY = "sagas:mail:relay-probe"
BREAKER_MIN_SECONDS = 1.0
BREAKER_MAX_SECONDS = 60.0

_local = threading.local()


class RelayDown(Exception):
    """The relay could not be reached (or hung up): the breaker is open."""


def _kept_connection() -> object:
    """This thread's SMTP connection, opened on first use and after an idle spell."""
    kept = getattr(_local, "connection", None)
    idle = time.monotonic() - getattr(_local, "used_at", 0.0)
    if kept is not None and idle > settings.EMAIL_CONNECTION_IDLE_SECONDS:
        _drop_connection()
        kept = None
    if kept is None:
        kept = get_connection(fail_silently=False)
        kept.open()
        _local.connection = kept
    return kept


def _drop_connection() -> None:
    kept = getattr(_local, "connection", None)
    _local.connection = None
    if kept is not None:
        try:
            kept.close()
        except Exception:  # closing a broken connection may fail; it is gone either way
            logger.debug("closing a broken SMTP connection failed", exc_info=True)


def _deliver(message: EmailMessage) -> None:
    backend = get_connection(fail_silently=False)
    if not isinstance(backend, SmtpBackend):
        # Other backends (console, file, memory) open per message, as Django does: the
        # file backend writes one file per connection.
        message.connection = backend
        message.send()
        return
    for attempt in (1, 2):
        message.connection = _kept_connection()
        try:
            message.send()
        except smtplib.SMTPServerDisconnected:
            _drop_connection()
            if attempt == 2:
                raise
            continue  # a kept connection the relay closed while idle: once more, fresh
        except BaseException:
            _drop_connection()
            raise
        _local.used_at = time.monotonic()
        return


def breaker_wait() -> float:
    """Seconds to wait before trying a relay that was unreachable (0: go ahead).

    Once the breaker's span is over, one send (the first to ask) probes the relay; the
    others wait for its outcome, which closes the breaker or opens it for twice as long.
    """
    try:
        state = cache.get(BREAKER_KEY)
        if not state:
            return 0.0
        left = state[0] - time.time()
        if left > 0:
            return left
        if cache.add(PROBE_KEY, 1, timeout=int(settings.EMAIL_TIMEOUT or 10) + 5):
            return 0.0
    except Exception:  # without the cache every send tries on its own
        return 0.0
    return 1.0


def _open_breaker() -> None:
    """Open the breaker; a probe that fails after it closed doubles its span. Sends that
    were already under way when it opened fail too, and leave it as it is."""
    try:
        previous = cache.get(BREAKER_KEY)
        if previous and previous[0] > time.time():
            return
        span = min(previous[1] * 2, BREAKER_MAX_SECONDS) if previous else BREAKER_MIN_SECONDS
        # Kept a minute past its span, to remember the span for the next doubling.
        cache.set(BREAKER_KEY, (time.time() + span, span), timeout=int(span) + 60)
        cache.delete(PROBE_KEY)
    except Exception:
        logger.debug("could not open the mail breaker", exc_info=True)


def _close_breaker() -> None:
    try:
        cache.delete_many([BREAKER_KEY, PROBE_KEY])
    except Exception:
        logger.debug("could not close the mail breaker", exc_info=True)


def _permanent_reply(exc: Exception) -> str | None:
    """The relay's reply when it refused the message for good (5xx), else None."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = list(exc.recipients.values())
        if replies and all(code >= 500 for code, _ in replies):
            code, text = replies[0]
            return f"{code} {_text(text)}"
        return None
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500:
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return None


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def send(message: EmailMessage) -> None:
    """Send one message, or raise what the step runner understands.

    :class:`~sagas.runner.Retry` (not counted as an attempt) while the breaker is open,
    :class:`~sagas.runner.GiveUp` for a permanent refusal, the error itself otherwise.
    """
    wait = breaker_wait()
    if wait > 0:
        # Spread the waiting sends over a moment, so the relay is not hit all at once.
        raise Retry(wait + random.uniform(0, 2.0), "the mail relay is unreachable", counts=False)
    try:
        with tracing.span("email send", backend=settings.EMAIL_BACKEND):
            _deliver(message)
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
        metrics.email_failed("unreachable")
        _open_breaker()
        raise RelayDown(f"{type(exc).__name__}: {exc}") from exc
    except smtplib.SMTPException as exc:  # the relay answered: about this message
        reply = _permanent_reply(exc)
        metrics.email_failed("error" if reply is None else "refused")
        if reply is not None:
            raise GiveUp(f"the mail relay refused the message: {reply}") from exc
        raise
    except OSError as exc:  # refused, unreachable, timed out (SMTPException is one too)
        metrics.email_failed("unreachable")
        _open_breaker()
        raise RelayDown(f"{type(exc).__name__}: {exc}") from exc
    except Exception:
        metrics.email_failed("error")
        raise
    metrics.email_sent()
    _close_breaker()


# --- at most one message per address and purpose per cooldown ----------------------


def _cooldown_key(purpose: str, address: str) -> str:
    """A keyed hash of the address (as the email reservation keeps): the table holds no
    address."""
    return personal.keyed_hash(f"{purpose}:{address.strip().lower()}")


def claim_cooldown(purpose: str, address: str, seconds: float) -> bool:
    """Whether ``address`` may get a ``purpose`` message now. Call inside the step's
    transaction; the address stays claimed (a transaction-scoped lock, which takes no
    transaction id) until it commits, so two instances cannot both pass."""
    key = _cooldown_key(purpose, address)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [key])
        if not cursor.fetchone()[0]:
            raise Retry(1.0, "another message to this address is being sent", counts=False)
    last = MailCooldown.objects.filter(key=key).values_list("sent_at", flat=True).first()
    return last is None or (timezone.now() - last).total_seconds() >= seconds


def record_sent(purpose: str, address: str) -> None:
    """Note the send (in the step's transaction, with the instance's new state)."""
    # One INSERT ... ON CONFLICT DO UPDATE: update_or_create would take a savepoint, a
    # locking read and a second savepoint around the insert.
    MailCooldown.objects.bulk_create(
        [MailCooldown(key=_cooldown_key(purpose, address), sent_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["key"],
        update_fields=["sent_at"],
    )
