"""A real SMTP relay for tests (aiosmtpd), slow on purpose, that can go down and come back."""

from __future__ import annotations

import asyncio
import email
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from tests.processes import free_port


@dataclass
class Received:
    """One message the relay accepted, and when its DATA began and ended."""

    recipients: list[str]
    subject: str
    body: str
    started: float
    finished: float


@dataclass
class _Handler:
    delay: float
    refuse: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        started = time.monotonic()
        await asyncio.sleep(self.delay)  # what a remote relay with TLS takes
        parsed = email.message_from_bytes(envelope.content)
        text = next(
            (
                part.get_payload(decode=True).decode()
                for part in parsed.walk()
                if part.get_content_type() == "text/plain"
            ),
            "",
        )
        with self.lock:
            self.received.append(
                Received(
                    list(envelope.rcpt_tos), parsed["Subject"], text, started, time.monotonic()
                )
            )
        return "250 Message accepted"


class _CountingController(Controller):
    def factory(self):
        self.handler.connections += 1
        return super().factory()


class SmtpRelay:
    """A relay on 127.0.0.1 taking ``delay`` seconds per message; :meth:`stop` and
    :meth:`start` take it down and bring it back on the same port."""

    def __init__(self, delay: float = 0.0) -> None:
        self.port = free_port()
        self.handler = _Handler(delay)
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = _CountingController(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def refuse(self, address: str) -> None:
        self.handler.refuse.add(address.lower())

    def settings(self) -> dict[str, str]:
        """What a worker needs in its environment to send here."""
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
            "EMAIL_TIMEOUT": "5",
        }
