"""Signals of the event store.

``events_appended`` is sent after the transaction that appended events commits (never
before, never for a rolled-back append), with ``stream_id``, ``event_types`` and
``result`` (an :class:`~eventstore.store.AppendResult`).
"""

from django.dispatch import Signal

events_appended = Signal()
