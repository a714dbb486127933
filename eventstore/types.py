"""Event types: stable names, frozen dataclasses, JSON (de)serialization and upcasting.

An event class is declared once with :func:`domain_event`; the name it is stored under
never changes. When its schema changes, bump ``version`` and register an
:func:`upcaster` that turns the previous version's JSON into the next one, so old
events are read as the current class without ever rewriting the events table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from eventstore.errors import EventDecodingError, EventSerializationError, UnknownEventType

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_encoder = msgspec.json.Encoder(decimal_format="string", uuid_format="canonical")


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event class and how to read every stored version of it."""

    name: str
    cls: type
    version: int
    decoder: msgspec.json.Decoder
    upcasters: dict[int, Upcaster]


class EventRegistry:
    """Maps stored type names to classes and back."""

    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type, EventType] = {}

    def register(self, cls: type, name: str, version: int = 1) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be an event")
        existing = self._by_name.get(name)
        if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"event type name {name!r} is already used by {existing.cls}")
        upcasters = existing.upcasters if existing else {}
        entry = EventType(name, cls, version, msgspec.json.Decoder(cls), upcasters)
        self._by_name[name] = entry
        self._by_class[cls] = entry

    def add_upcaster(self, name: str, from_version: int, function: Upcaster) -> None:
        self.lookup(name).upcasters[from_version] = function

    def lookup(self, name: str) -> EventType:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventType(name) from None

    def for_event(self, event: object) -> EventType:
        try:
            return self._by_class[type(event)]
        except KeyError:
            raise UnknownEventType(type(event).__name__) from None

    def for_event_class(self, cls: type) -> EventType:
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnknownEventType(cls.__name__) from None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def encode(self, event: object) -> tuple[EventType, str]:
        """The event's registered type and its JSON text."""
        entry = self.for_event(event)
        try:
            return entry, _encoder.encode(event).decode()
        except (TypeError, ValueError, OverflowError) as exc:
            raise EventSerializationError(f"{entry.name} cannot be stored as JSON: {exc}") from exc

    def decode(self, name: str, version: int, data: str | bytes) -> Any:
        """Read stored JSON as the current class, upcasting older versions first."""
        entry = self.lookup(name)
        if version > entry.version:
            # Written by a newer release: read as this version, its new fields would be
            # dropped without a word (and folded, or shown, as something it is not).
            raise EventDecodingError(
                f"{name} version {version} is stored, but this release reads up to "
                f"version {entry.version}"
            )
        try:
            if version == entry.version:
                return entry.decoder.decode(data)
            payload = msgspec.json.decode(data)
            for step in range(version, entry.version):
                upcast = entry.upcasters.get(step)
                if upcast is None:
                    raise EventDecodingError(
                        f"{name} version {version} is stored but no upcaster "
                        f"from version {step} to {step + 1} is registered"
                    )
                try:
                    payload = upcast(payload)
                except Exception as exc:
                    raise EventDecodingError(
                        f"upcasting stored {name} from version {step} failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            return entry.decoder.decode(_encoder.encode(payload))
        except msgspec.ValidationError as exc:
            raise EventDecodingError(f"stored {name} (v{version}) is not valid: {exc}") from exc


registry = EventRegistry()


def domain_event(name: str, *, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Declare an event: a frozen, keyword-only dataclass stored under ``name``."""

    def decorate(cls: type[T]) -> type[T]:
        event_cls = dataclass(frozen=True, kw_only=True, slots=True)(cls)
        registry.register(event_cls, name, version)
        return event_cls

    return decorate


def upcaster(name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``function`` to turn version ``from_version`` of ``name`` into the next."""

    def decorate(function: Upcaster) -> Upcaster:
        registry.add_upcaster(name, from_version, function)
        return function

    return decorate
