"""Event types: stable names, frozen dataclasses, JSON (de)serialization and upcasting.

An event class is declared once with :func:`domain_event`; the name it is stored under
never changes. When its schema changes, bump ``version`` and register an
:func:`upcaster` that turns the previous version's JSON into the next one, so old
events are read as the current class without ever rewriting the events table.

An event class may declare ``personal`` fields and the field naming their data
``subject``. Those fields are stored sealed, with the subject's own key (a
:class:`KeyRing`, see :mod:`eventstore.personal`), under the member ``"#"`` of the
stored JSON: ``{"#": "<subject>:<base64 nonce+ciphertext>", ...the other fields}``.
When the subject's key has been destroyed they read as :data:`ERASED` (or None where
the field's type allows no string). A member named ``"#"`` sorts first in PostgreSQL's
``jsonb`` text (shortest key first), so reading it needs no JSON parse of its own: the
opened fields are joined to the rest of the text and decoded once into the class.
"""

from __future__ import annotations

import binascii
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from eventstore.errors import EventDecodingError, EventSerializationError, UnknownEventType

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
Opener = tuple[Callable[[bytes, bytes, bytes], bytes], bytes]
"""A subject's AES-GCM ``decrypt`` for one event type and the associated data it takes."""

_encoder = msgspec.json.Encoder(decimal_format="string", uuid_format="canonical")

SEALED = "#"
"""The member of a stored payload that holds its sealed personal fields."""
ERASED = "[erased]"
"""What a personal text field reads as once its subject's key is destroyed."""
NONCE_BYTES = 12
"""A sealed token is the base64 of the AES-GCM nonce (this long) and the ciphertext."""
_SEALED_PREFIX = '{"#":'
_SEALED_PREFIX_BYTES = _SEALED_PREFIX.encode()


class KeyRing(Protocol):
    """Seals and opens personal fields with the key of their data subject."""

    def seal(self, subject: str, context: str, plaintext: bytes) -> str: ...

    def open(self, subject: str, context: str, token: str) -> bytes | None:
        """The plaintext, or None when the subject's key is gone (erased).

        Raises EventDecodingError for a token that does not open with a key it has.
        """
        ...

    def opener(self, subject: str, context: str) -> Opener | None:
        """What opens the subject's tokens of ``context``, or None when its key is gone."""
        ...

    def prefetch(self, subjects: Iterable[str]) -> None:
        """Fetch the keys of ``subjects`` at once (a read's), before opening their tokens."""
        ...


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event class and how to read every stored version of it."""

    name: str
    cls: type
    version: int
    decoder: msgspec.json.Decoder
    upcasters: dict[int, Upcaster]
    personal: tuple[str, ...] = ()
    subject: str | None = None
    erased: dict[str, Any] = dataclasses.field(default_factory=dict)
    fields: tuple[str, ...] = ()

    def subject_of(self, event: object) -> str | None:
        """The data subject whose key seals this event, or None if it holds no personal value."""
        if not self.personal or all(getattr(event, name) is None for name in self.personal):
            return None
        subject = getattr(event, self.subject)  # type: ignore[arg-type]
        if subject is None:
            raise EventSerializationError(
                f"{self.name} holds personal data but its subject {self.subject!r} is None"
            )
        return str(subject)


class EventRegistry:
    """Maps stored type names to classes and back."""

    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type, EventType] = {}

    def register(
        self,
        cls: type,
        name: str,
        version: int = 1,
        *,
        personal: Iterable[str] = (),
        subject: str | None = None,
    ) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be an event")
        existing = self._by_name.get(name)
        if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"event type name {name!r} is already used by {existing.cls}")
        upcasters = existing.upcasters if existing else {}
        personal = tuple(personal)
        erased = _erased_values(cls, personal, subject)
        entry = EventType(
            name,
            cls,
            version,
            msgspec.json.Decoder(cls),
            upcasters,
            personal,
            subject,
            erased,
            tuple(field.name for field in dataclasses.fields(cls)),
        )
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

    def encode(self, event: object, keys: KeyRing | None = None) -> tuple[EventType, str]:
        """The event's registered type and its JSON text, personal fields sealed by ``keys``."""
        entry = self.for_event(event)
        subject = entry.subject_of(event)
        if subject is not None and keys is None:
            raise EventSerializationError(f"{entry.name} holds personal data: it needs keys")
        try:
            if subject is None:
                return entry, _encoder.encode(event).decode()
            secret = {f: v for f in entry.personal if (v := getattr(event, f)) is not None}
            fields = {f: getattr(event, f) for f in entry.fields if f not in secret}
            token = keys.seal(subject, entry.name, _encoder.encode(secret))  # type: ignore[union-attr]
            return entry, _encoder.encode({SEALED: f"{subject}:{token}", **fields}).decode()
        except (TypeError, ValueError, OverflowError) as exc:
            raise EventSerializationError(f"{entry.name} cannot be stored as JSON: {exc}") from exc

    def decode(
        self, name: str, version: int, data: str | bytes, keys: KeyRing | None = None
    ) -> Any:
        """Read stored JSON as the current class, upcasting older versions first.

        Sealed personal fields are opened with ``keys``; without them, reading a payload
        that holds any is an error (never a silent "erased").
        """
        entry = self.lookup(name)
        if version > entry.version:
            # Written by a newer release: read as this version, its new fields would be
            # dropped without a word (and folded, or shown, as something it is not).
            raise EventDecodingError(
                f"{name} version {version} is stored, but this release reads up to "
                f"version {entry.version}"
            )
        try:
            if isinstance(data, str):
                sealed = data.startswith(_SEALED_PREFIX)
            elif sealed := data.startswith(_SEALED_PREFIX_BYTES):
                data = data.decode()
            if not sealed:
                if version == entry.version:
                    return entry.decoder.decode(data)
                return self._decode_dict(entry, version, msgspec.json.decode(data))
            if keys is None:
                raise EventDecodingError(f"stored {name} holds sealed personal data: no keys")
            if version == entry.version:
                # The hot path (folding, projections, replays), so inline: the sealed member
                # comes first (jsonb's order), its value "<subject>:<token>" ends at the next
                # quote unless that one is escaped (the token, base64, holds none).
                start = data.find('"', len(_SEALED_PREFIX)) + 1
                end = data.find('"', start)
                if start and end > start and data[end - 1] != "\\":
                    subject, _, token = data[start:end].rpartition(":")
                    plain = keys.open(subject, name, token)
                    if plain is not None:
                        # '{"email":"a@b"' + ', "user_id": "..."}': one object, decoded once.
                        return entry.decoder.decode(plain[:-1].decode() + data[end + 1 :])
            return self._decode_sealed(entry, version, data, keys)
        except msgspec.ValidationError as exc:
            raise EventDecodingError(f"stored {name} (v{version}) is not valid: {exc}") from exc

    def decode_all(
        self,
        rows: Sequence[Sequence[Any]],
        keys: KeyRing | None = None,
        on_error: Callable[[Exception, Sequence[Any]], Any] | None = None,
    ) -> list[Any]:
        """:meth:`decode` of each ``(name, version, data, ...)`` of one read (a stream, a
        feed page), in order.

        Per read, not per event: the keys of every sealed payload are fetched in one
        query, each sealed member is split once, and each type's entry and each (type,
        subject)'s opener are looked up once. Anything but a current, well-formed payload
        goes through :meth:`decode`, so errors read exactly as there: raised, or, with
        ``on_error``, an unknown type or undecodable payload becomes what it returns for
        that row.
        """
        # As in decode: a sealed payload reads '{"#": "<subject>:<token>", ...the rest}';
        # its sealed member ends at the next quote unless that one is escaped.
        sealed: list[tuple[str, str, int] | None] = []
        if keys is not None:
            skip = len(_SEALED_PREFIX)
            subjects = set()
            for row in rows:
                data = row[2]
                if data.__class__ is str and data.startswith(_SEALED_PREFIX):
                    start = data.find('"', skip) + 1
                    end = data.find('"', start)
                    if start and end > start and data[end - 1] != "\\":
                        subject, _, token = data[start:end].rpartition(":")
                        subjects.add(subject)
                        sealed.append((subject, token, end))
                        continue
                sealed.append(None)
            if subjects:
                keys.prefetch(subjects)
        else:
            sealed = [None] * len(rows)

        entries: dict[str, EventType] = {}
        openers: dict[tuple[str, str], Opener | None] = {}
        decode = self.decode
        a2b = binascii.a2b_base64
        decoded: list[Any] = []
        append = decoded.append
        for row, parts in zip(rows, sealed, strict=True):
            name, version, data = row[0], row[1], row[2]
            entry = entries.get(name)
            if entry is not None and version == entry.version:
                if parts is not None:
                    subject, token, end = parts
                    try:
                        opener = openers[name, subject]
                    except KeyError:
                        opener = openers[name, subject] = keys.opener(subject, name)  # type: ignore[union-attr]
                    if opener is not None:
                        try:
                            raw = a2b(token)
                            plain = opener[0](raw[:NONCE_BYTES], raw[NONCE_BYTES:], opener[1])
                            append(entry.decoder.decode(plain[:-1].decode() + data[end + 1 :]))
                            continue
                        except Exception:  # decode reports it
                            pass
                elif data.__class__ is str and not data.startswith(_SEALED_PREFIX):
                    try:
                        append(entry.decoder.decode(data))
                        continue
                    except msgspec.ValidationError:
                        pass
            try:
                append(decode(name, version, data, keys))
                if entry is None:
                    entries[name] = self.lookup(name)
            except (UnknownEventType, EventDecodingError) as exc:
                if on_error is None:
                    raise
                append(on_error(exc, row))
        return decoded

    def _decode_sealed(self, entry: EventType, version: int, text: str, keys: KeyRing) -> Any:
        """The general case: an erased subject, an older version, an unusual text."""
        payload = msgspec.json.decode(text)
        subject, _, token = payload.pop(SEALED).rpartition(":")
        plain = keys.open(subject, entry.name, token)
        if plain is not None:
            payload.update(msgspec.json.decode(plain))
        payload = self._upcast(entry, version, payload)
        if plain is None:
            for field, erased in entry.erased.items():
                payload.setdefault(field, erased)  # the sealed ones are the missing ones
        return entry.decoder.decode(_encoder.encode(payload))

    def _decode_dict(self, entry: EventType, version: int, payload: dict[str, Any]) -> Any:
        return entry.decoder.decode(_encoder.encode(self._upcast(entry, version, payload)))

    def _upcast(self, entry: EventType, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        name = entry.name
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
        return payload


def _erased_values(cls: type, personal: tuple[str, ...], subject: str | None) -> dict[str, Any]:
    """What each personal field reads as once erased: ERASED if it may be a string, else None.

    Checked when the class is declared, so an erased event always decodes into its class.
    """
    if not personal:
        if subject is not None:
            raise TypeError(f"{cls.__name__} names a subject but no personal fields")
        return {}
    hints = typing.get_type_hints(cls)
    if subject is None or subject not in hints:
        raise TypeError(f"{cls.__name__}: personal fields need subject=<one of its fields>")
    erased: dict[str, Any] = {}
    for field in personal:
        if field not in hints:
            raise TypeError(f"{cls.__name__} has no field {field!r} to declare personal")
        if field == subject:
            raise TypeError(f"{cls.__name__}: the subject {field!r} cannot be personal too")
        hint = hints[field]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        if str in options:
            erased[field] = ERASED
        elif type(None) in options:
            erased[field] = None
        else:
            raise TypeError(
                f"{cls.__name__}.{field} is personal, so it must allow str or None "
                "(what it reads as once erased)"
            )
    return erased


registry = EventRegistry()


def domain_event(
    name: str, *, version: int = 1, personal: Iterable[str] = (), subject: str | None = None
) -> Callable[[type[T]], type[T]]:
    """Declare an event: a frozen, keyword-only dataclass stored under ``name``.

    ``personal`` names the fields that hold personal data of the person the field
    ``subject`` identifies (its value is the key's id): they are stored encrypted with
    that person's key, and read as :data:`ERASED` once the key is destroyed.
    """

    def decorate(cls: type[T]) -> type[T]:
        event_cls = dataclass(frozen=True, kw_only=True, slots=True)(cls)
        registry.register(event_cls, name, version, personal=personal, subject=subject)
        return event_cls

    return decorate


def upcaster(name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``function`` to turn version ``from_version`` of ``name`` into the next."""

    def decorate(function: Upcaster) -> Upcaster:
        registry.add_upcaster(name, from_version, function)
        return function

    return decorate
