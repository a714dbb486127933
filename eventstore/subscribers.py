"""Subscribers (projections and process managers) and the registry that knows them.

A subscriber handles the event types it marks with ``@handles``, in feed order, batch
by batch (:mod:`eventstore.subscriptions` moves it). It can be split into
``partitions``: each stream's events all fall into one partition, and the partitions move
forward independently, on as many workers as there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from eventstore import partitions as partitioning
from eventstore.reads import RecordedEvent
from eventstore.types import registry


def handles(*event_classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a subscriber method as the handler of these event classes."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method._handles = event_classes  # type: ignore[attr-defined]
        return method

    return mark


class Subscriber:
    """Something that reacts to stored events in feed order; subclass a kind below."""

    name: ClassVar[str]
    kind: ClassVar[str] = "subscriber"
    batch_size: ClassVar[int] = 500
    # How many partitions move this subscriber forward (SUBSCRIBER_PARTITIONS overrides).
    partitions: ClassVar[int] = 1
    # A batch commits without waiting for its WAL to reach the disk. Safe while a batch
    # only writes to this database: a crash can lose its last few hundred milliseconds
    # of batches, but each with its checkpoint, so they are simply redone; and anything
    # that builds on them and commits durably flushes them first (the WAL is one
    # sequence). A subscriber with effects outside the database in its batch sets True.
    synchronous_commit: ClassVar[bool] = False
    _handlers: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                for event_class in getattr(value, "_handles", ()):
                    handlers[registry.for_event_class(event_class).name] = attribute
        cls._handlers = handlers

    @property
    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def partition_count(self) -> int:
        """The configured count: the class's ``partitions`` or its setting."""
        return partitioning.configured(self.name, type(self).partitions)

    def dispatch(self, event: RecordedEvent, *args: Any) -> None:
        """Call the ``@handles`` method for ``event``'s type with ``args`` then the event.

        The one way events reach handlers: the default :meth:`handle_batch` passes no
        extra arguments; a subscriber that folds a batch in memory passes its state.
        """
        getattr(self, self._handlers[event.event_type])(*args, event)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        """Handle a batch inside its transaction; override to fold or write in bulk."""
        for event in events:
            self.dispatch(event)


class Projection(Subscriber):
    """Writes read models. ``read_models`` are the tables a replay rebuilds aside."""

    kind = "projection"
    read_models: ClassVar[list[type]] = []


class ProcessManager(Subscriber):
    """Reacts to events by issuing commands (a saga). Never replayed."""

    kind = "process_manager"


_subscribers: dict[str, Subscriber] = {}


def register(subscriber: Subscriber) -> Subscriber:
    """Register a subscriber (from its app's ``AppConfig.ready()``)."""
    existing = _subscribers.get(subscriber.name)
    if existing is not None and type(existing) is not type(subscriber):
        raise ValueError(f"subscriber name {subscriber.name!r} is already taken")
    subscriber.partition_count  # noqa: B018  (a bad count fails at start, not at run time)
    _subscribers[subscriber.name] = subscriber
    return subscriber


def get(name: str) -> Subscriber:
    try:
        return _subscribers[name]
    except KeyError:
        known = ", ".join(sorted(_subscribers)) or "none"
        raise LookupError(f"no subscriber named {name!r} (registered: {known})") from None


def all_subscribers() -> list[Subscriber]:
    return [_subscribers[name] for name in sorted(_subscribers)]


def interested_in(event_types: Iterable[str]) -> list[Subscriber]:
    wanted = set(event_types)
    return [s for s in all_subscribers() if wanted.intersection(s._handlers)]


@dataclass(frozen=True)
class Partition:
    """Partition ``number`` of a subscriber split into ``count``."""

    subscriber: Subscriber
    number: int
    count: int

    @property
    def name(self) -> str:
        return self.subscriber.name

    @property
    def buckets(self) -> tuple[int, ...] | None:
        """The buckets it reads; None: all of them (an unsplit subscriber)."""
        return None if self.count == 1 else partitioning.buckets_of(self.number, self.count)

    def __str__(self) -> str:
        return self.name if self.count == 1 else f"{self.name}[{self.number}/{self.count}]"


def partitions_of(subscriber: Subscriber, count: int | None = None) -> list[Partition]:
    """The subscriber's partitions (for ``count`` of them, else as configured)."""
    count = subscriber.partition_count if count is None else count
    return [Partition(subscriber, number, count) for number in range(count)]


def partition_for(subscriber: Subscriber, stream_id: str) -> Partition:
    count = subscriber.partition_count
    return Partition(subscriber, partitioning.partition_of(stream_id, count), count)
