"""Personal fields through encryption (no database: keys held in memory)."""

from __future__ import annotations

import dataclasses
import json
import typing
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.events  # noqa: F401  (registers the generic test events)
import users.events  # noqa: F401
from eventstore.errors import EventDecodingError, EventSerializationError
from eventstore.personal import KeyRing, master_key_id
from eventstore.types import ERASED, SEALED, domain_event, registry
from users.events import UserCreated, UserUpdated


class MemoryKeyRing(KeyRing):
    """The real sealing and opening, with keys made in memory instead of the keys table."""

    def __init__(self) -> None:
        self.alias = "memory"
        self._ciphers = {}

    def prefetch(self, subjects: Iterable[str]) -> None:
        for subject in subjects:
            self._ciphers.setdefault(subject, None)

    def ensure(self, subjects: Iterable[str]) -> None:
        for subject in subjects:
            if self._ciphers.get(subject) is None:
                self._ciphers[subject] = AESGCM(AESGCM.generate_key(256))


def _field_strategy(hint: Any) -> st.SearchStrategy:
    if hint is Decimal:
        return st.decimals(allow_nan=False, allow_infinity=False)
    return st.from_type(hint)


def _event_strategy(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _field_strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


EVENT_CLASSES = sorted(
    (registry.lookup(name).cls for name in registry.names() if not name.startswith("bench")),
    key=lambda cls: cls.__name__,
)
any_event = st.sampled_from(EVENT_CLASSES).flatmap(_event_strategy)


def test_every_user_event_is_declared_and_covered() -> None:
    names = {cls.__name__ for cls in EVENT_CLASSES}
    assert {"UserCreated", "UserUpdated", "UserDeleted", "UserWelcomed", "UserErased"} <= names
    assert registry.lookup("UserCreated").personal == ("email", "first_name", "last_name")
    assert registry.lookup("UserErased").personal == ()


@settings(max_examples=400, deadline=None)
@given(event=any_event)
def test_every_event_type_round_trips_through_encryption(event: Any) -> None:
    keys = MemoryKeyRing()
    entry, text = registry.encode(event, keys)
    assert registry.decode(entry.name, entry.version, text, keys) == event
    # Also from bytes, and from the text PostgreSQL's jsonb gives back (other spacing).
    assert registry.decode(entry.name, entry.version, text.encode(), keys) == event
    spaced = json.dumps(json.loads(text))
    assert registry.decode(entry.name, entry.version, spaced, keys) == event
    stored = json.loads(text)
    for field in entry.personal:
        value = getattr(event, field)
        if value is None:
            assert stored[field] is None  # None is no personal data: kept as it is
        else:
            assert field not in stored
    if any(getattr(event, field) is not None for field in entry.personal):
        subject = str(getattr(event, entry.subject))
        assert stored[SEALED].rpartition(":")[0] == subject


@settings(max_examples=200, deadline=None)
@given(event=any_event)
def test_with_the_key_destroyed_personal_fields_read_as_erased(event: Any) -> None:
    keys = MemoryKeyRing()
    entry, text = registry.encode(event, keys)
    for subject in list(keys._ciphers):
        keys.forget(subject)
    decoded = registry.decode(entry.name, entry.version, text, keys)
    for field in dataclasses.fields(event):
        before, after = getattr(event, field.name), getattr(decoded, field.name)
        if field.name in entry.personal and before is not None:
            assert after == entry.erased[field.name]
        else:
            assert after == before


@settings(max_examples=200, deadline=None)
@given(
    email=st.text(min_size=6).filter(lambda s: s.strip() == s),
    first=st.text(min_size=6),
    last=st.text(min_size=6),
)
def test_the_stored_text_holds_no_personal_value(email: str, first: str, last: str) -> None:
    user_id = uuid.uuid4()
    event = UserCreated(user_id=user_id, email=email, first_name=first, last_name=last)
    _, text = registry.encode(event, MemoryKeyRing())
    for value in {email, first, last} - {str(user_id)}:
        assert msgspec.json.encode(value).decode() not in text
        assert value not in text or value in str(user_id)


def test_an_erased_update_keeps_what_it_did_not_change() -> None:
    keys = MemoryKeyRing()
    user_id = uuid.uuid4()
    entry, text = registry.encode(UserUpdated(user_id=user_id, first_name="Ada"), keys)
    keys.forget(str(user_id))
    decoded = registry.decode(entry.name, entry.version, text, keys)
    assert decoded == UserUpdated(user_id=user_id, first_name=ERASED)


def test_a_sealed_payload_without_keys_is_an_error_never_erased() -> None:
    keys = MemoryKeyRing()
    event = UserCreated(user_id=uuid.uuid4(), email="a@b.c", first_name="A", last_name="B")
    entry, text = registry.encode(event, keys)
    with pytest.raises(EventDecodingError, match="no keys"):
        registry.decode(entry.name, entry.version, text)
    with pytest.raises(EventSerializationError, match="needs keys"):
        registry.encode(event)


def _outcome(decode: Any) -> Any:
    try:
        return decode()
    except Exception as exc:  # compared by type and message
        return (type(exc), str(exc))


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(any_event, min_size=1, max_size=12),
    forgotten=st.sets(st.integers(0, 11)),
    tampered=st.sets(st.integers(0, 11)),
)
def test_a_read_decodes_its_events_together_as_one_by_one(
    events: list[Any], forgotten: set[int], tampered: set[int]
) -> None:
    """decode_all, the path of stream and feed reads, reads each payload as decode does:
    erased subjects, tampered tokens and plaintext alike, errors included."""
    keys = MemoryKeyRing()
    rows = []
    for index, event in enumerate(events):
        entry, text = registry.encode(event, keys)
        stored = json.loads(text)
        if index in tampered and SEALED in stored:  # a token that no longer authenticates
            subject, _, token = stored[SEALED].rpartition(":")
            stored[SEALED] = f"{subject}:{token[::-1]}"
        rows.append((entry.name, entry.version, json.dumps(stored)))
    rows.append(("no.such.Event", 1, "{}"))
    subjects = sorted(keys._ciphers)
    for index in forgotten:
        if index < len(subjects):
            keys.forget(subjects[index])

    one_by_one = [_outcome(lambda row=row: registry.decode(*row, keys)) for row in rows]
    kept = registry.decode_all(rows, keys, on_error=lambda exc, row: (type(exc), str(exc)))
    assert kept == one_by_one
    first_error = next((o for o in one_by_one if isinstance(o, tuple)), None)
    assert _outcome(lambda: registry.decode_all(rows, keys)) == first_error


def test_a_tampered_or_moved_token_does_not_authenticate() -> None:
    keys = MemoryKeyRing()
    one, other = uuid.uuid4(), uuid.uuid4()
    entry, text = registry.encode(
        UserCreated(user_id=one, email="a@b.c", first_name="A", last_name="B"), keys
    )
    keys.ensure([str(other)])
    moved = text.replace(str(one), str(other))  # another person's event, same ciphertext
    with pytest.raises(EventDecodingError, match="does not open"):
        registry.decode(entry.name, entry.version, moved, keys)
    stored = json.loads(text)
    subject, _, token = stored[SEALED].rpartition(":")
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    stored[SEALED] = f"{subject}:{flipped}"
    with pytest.raises(EventDecodingError):
        registry.decode(entry.name, entry.version, json.dumps(stored), keys)


def test_declarations_are_checked_when_the_class_is_declared() -> None:
    with pytest.raises(TypeError, match="subject"):

        @domain_event("test.NoSubject", personal=("name",))
        class NoSubject:
            name: str

    with pytest.raises(TypeError, match="allow str or None"):

        @domain_event("test.NumberIsPersonal", personal=("age",), subject="who")
        class NumberIsPersonal:
            who: uuid.UUID
            age: int

    with pytest.raises(TypeError, match="no field"):

        @domain_event("test.Missing", personal=("nickname",), subject="who")
        class Missing:
            who: uuid.UUID


def test_master_key_ids_name_the_key_without_revealing_it() -> None:
    raw = b"k" * 32
    assert master_key_id(raw) == master_key_id(raw) != master_key_id(b"j" * 32)
    assert raw.hex() not in master_key_id(raw)
