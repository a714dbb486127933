"""Typed errors of the event store, so callers (handlers, the API) can react precisely."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID


class EventStoreError(Exception):
    """Base class of every error the event store raises on purpose."""


class InvalidAppend(EventStoreError, ValueError):
    """The append was refused before anything was written (bad stream id, no events, ...)."""


class EventSerializationError(InvalidAppend):
    """An event payload cannot be turned into JSON."""


class InvalidCursor(EventStoreError, ValueError):
    """A feed cursor that this store did not hand out."""


class UnknownEventType(EventStoreError, LookupError):
    """A stored or appended event type that no registered class declares."""

    def __init__(self, event_type: str) -> None:
        super().__init__(
            f"unknown event type {event_type!r}: no event class is registered under this name"
        )
        self.event_type = event_type


class EventDecodingError(EventStoreError):
    """A stored payload does not match its (upcast) event class."""


class ConcurrencyError(EventStoreError):
    """The stream is not at the version the writer expected; nothing was written."""

    def __init__(self, stream_id: str, expected: object, actual: int | None) -> None:
        actual_text = "no stream" if actual is None else f"version {actual}"
        super().__init__(
            f"stream {stream_id!r} was expected at {expected}, but it is at {actual_text}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventId(EventStoreError):
    """Some of the event ids are stored already, but not as this exact append."""

    def __init__(self, stream_id: str, event_ids: Sequence[UUID]) -> None:
        ids = ", ".join(str(event_id) for event_id in event_ids)
        super().__init__(
            f"event ids already stored elsewhere than this append to {stream_id!r}: {ids}"
        )
        self.stream_id = stream_id
        self.event_ids = list(event_ids)


class StreamNotFound(EventStoreError, LookupError):
    """The stream (and so the aggregate) does not exist."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} does not exist")
        self.stream_id = stream_id
