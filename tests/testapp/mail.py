"""Email backends that misbehave on purpose, for the saga's fault tests.

They write each message to a file (Django's file backend), so a test can count the
emails a worker *process* sent.
"""

import time
from pathlib import Path

from django.conf import settings
from django.core.mail.backends.filebased import EmailBackend as FileBackend
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from tests.testapp.models import Switch


class HangingBackend(FileBackend):
    """With switch ``hang-on-email`` on: leave a marker, then hang (the test kills us)."""

    def send_messages(self, messages):
        if Switch.objects.filter(name="hang-on-email").exists():
            (Path(settings.EMAIL_FILE_PATH) / "sending.marker").touch()
            time.sleep(600)
        return super().send_messages(messages)


class FlakyBackend(LocmemBackend):
    """Fails the next ``failures_left`` sends of this process, then delivers."""

    failures_left = 0

    def send_messages(self, messages):
        if FlakyBackend.failures_left > 0:
            FlakyBackend.failures_left -= 1
            raise ConnectionRefusedError("mail server unavailable")
        return super().send_messages(messages)


class XidProbeBackend(LocmemBackend):
    """Records, per send, the transaction id the sending connection holds (None: none).

    An id held across a send would hold back every subscriber's horizon for as long as
    the mail server takes to answer.
    """

    seen: list = []

    def send_messages(self, messages):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id_if_assigned()")
            XidProbeBackend.seen.append(cursor.fetchone()[0])
        return super().send_messages(messages)
