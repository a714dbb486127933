"""Event types and feed cursors, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from eventstore.cursor import Cursor
from eventstore.errors import EventDecodingError, InvalidCursor, UnknownEventType
from eventstore.types import domain_event, registry
from tests.events import Noted, Priced, Renamed


def test_round_trip_keeps_uuid_and_decimal() -> None:
    event = Priced(item=uuid.uuid4(), price=Decimal("0.10"))
    entry, text = registry.encode(event)
    assert entry.name == "test.Priced"
    assert registry.decode("test.Priced", 1, text) == event


def test_datetimes_round_trip_with_their_zone() -> None:
    @domain_event("test.Stamped")
    class Stamped:
        at: datetime

    event = Stamped(at=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC))
    _, text = registry.encode(event)
    assert registry.decode("test.Stamped", 1, text) == event


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Noted(text="a").text = "b"  # type: ignore[misc]


def test_upcaster_chain_reads_old_versions() -> None:
    assert registry.decode("test.Renamed", 1, '{"name": "Grace Hopper"}') == Renamed(
        first_name="Grace", last_name="Hopper"
    )


def test_missing_upcaster_is_named() -> None:
    @domain_event("test.Grown", version=3)
    class Grown:
        size: int

    with pytest.raises(EventDecodingError, match="from version 1 to 2"):
        registry.decode("test.Grown", 1, '{"size": 1}')


def test_a_version_newer_than_this_release_is_refused_not_misread() -> None:
    """Read as version 2, a version 3 payload would lose its new field without a word."""
    with pytest.raises(EventDecodingError, match="reads up to version 2"):
        registry.decode("test.Renamed", 3, '{"first_name": "A", "last_name": "B", "title": "Dr"}')


def test_a_failing_upcaster_is_a_decoding_error() -> None:
    with pytest.raises(EventDecodingError, match=r"upcasting stored test\.Renamed from version 1"):
        registry.decode("test.Renamed", 1, '{"full_name": "no name key"}')


def test_payload_not_matching_class() -> None:
    with pytest.raises(EventDecodingError, match=r"test\.Noted"):
        registry.decode("test.Noted", 1, '{"text": 5}')


def test_unknown_type_names_itself() -> None:
    with pytest.raises(UnknownEventType, match="'nope'"):
        registry.decode("nope", 1, "{}")


def test_name_reuse_by_another_class_is_refused() -> None:
    with pytest.raises(ValueError, match="already used"):

        @domain_event("test.Noted")
        class Impostor:
            x: int


@pytest.mark.parametrize("cursor", [Cursor(0, 0), Cursor(2**40, 17), Cursor(5, 2**62)])
def test_cursor_round_trip(cursor: Cursor) -> None:
    assert Cursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize("token", ["", "abc", "1-2-3", "-1-2", "zz-1", "1-" + "f" * 60, "1--2"])
def test_bad_cursor(token: str) -> None:
    with pytest.raises(InvalidCursor):
        Cursor.parse(token)


def test_cursor_order_is_transaction_then_position() -> None:
    assert Cursor(1, 100) < Cursor(2, 1) < Cursor(2, 2)
