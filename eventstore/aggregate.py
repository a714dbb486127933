"""Aggregates rebuilt from their streams, and the repository that loads and saves them.

An aggregate method checks the business rules, then calls :meth:`Aggregate.record`;
methods marked ``@when(EventClass)`` only change state, so replaying history and
recording new events run the same code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from eventstore import reads, store
from eventstore.errors import StreamNotFound
from eventstore.store import NO_STREAM, AppendResult, NewEvent


def when(event_class: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark an aggregate method as the state change for ``event_class``."""

    def mark(method: Callable[..., None]) -> Callable[..., None]:
        method._applies = event_class  # type: ignore[attr-defined]
        return method

    return mark


class Aggregate:
    """Base of event-sourced aggregates: ``category`` names their streams."""

    category: ClassVar[str]
    _appliers: ClassVar[dict[type, Callable[..., None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._appliers = {
            value._applies: value
            for klass in reversed(cls.__mro__)
            for value in vars(klass).values()
            if hasattr(value, "_applies")
        }

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        self.id = aggregate_id
        self.version = -1  # the version of the last event applied; -1 = no stream yet
        self.loaded_version = -1
        # Payloads, or NewEvents where the caller chose the id: the store gives payloads
        # new ids, and appends them without the savepoint a re-send would need.
        self._pending: list[Any] = []

    @classmethod
    def stream_id_for(cls, aggregate_id: uuid.UUID) -> str:
        return f"{cls.category}-{aggregate_id}"

    @property
    def stream_id(self) -> str:
        return self.stream_id_for(self.id)

    @property
    def pending_events(self) -> list[Any]:
        return [e.payload if isinstance(e, NewEvent) else e for e in self._pending]

    def apply(self, event: object) -> None:
        try:
            applier = self._appliers[type(event)]
        except KeyError:
            raise TypeError(f"{type(self).__name__} cannot apply {type(event).__name__}") from None
        applier(self, event)

    def record(self, event: object, *, event_id: uuid.UUID | None = None) -> None:
        """Apply a new event and keep it for the next save."""
        self.apply(event)
        self.version += 1
        self._pending.append(event if event_id is None else NewEvent(event, event_id))

    def take_pending(self) -> list[Any]:
        pending, self._pending = self._pending, []
        return pending


A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Loads an aggregate by replaying its stream; saves with the loaded version as lock."""

    def __init__(self, aggregate_class: type[A], *, using: str = "default") -> None:
        self.aggregate_class = aggregate_class
        self.using = using

    def load(self, aggregate_id: uuid.UUID) -> A:
        """Replay the stream; raises :class:`StreamNotFound` if it does not exist."""
        stream_id = self.aggregate_class.stream_id_for(aggregate_id)
        aggregate = self.aggregate_class(aggregate_id)
        history = reads.load_stream_payloads(stream_id, using=self.using)
        apply = aggregate.apply
        for _, event in history:
            apply(event)
        aggregate.version = aggregate.loaded_version = history[-1][0]
        return aggregate

    def get_or_new(self, aggregate_id: uuid.UUID) -> A:
        try:
            return self.load(aggregate_id)
        except StreamNotFound:
            return self.aggregate_class(aggregate_id)

    def save(self, aggregate: A) -> AppendResult | None:
        """Append the new events, expecting the stream where it was loaded. None if none."""
        pending = aggregate.take_pending()
        if not pending:
            return None
        expected = NO_STREAM if aggregate.loaded_version < 0 else aggregate.loaded_version
        result = store.append(aggregate.stream_id, pending, expected, using=self.using)
        aggregate.version = aggregate.loaded_version = result.version
        return result
