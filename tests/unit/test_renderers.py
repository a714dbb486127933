"""The hot read's renderer writes what DRF's JSONRenderer writes, byte for byte."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from rest_framework.renderers import JSONRenderer

from config.renderers import json_as_drf

# What a read-model row holds: text of any kind (control characters, U+2028, astral
# planes; PostgreSQL stores no lone surrogates), integers, None, UUIDs, UTC datetimes.
text = st.text(st.characters(exclude_categories=("Cs",)))
datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text, st.uuids(), datetimes
)
rows = st.dictionaries(text, values, max_size=12)


@given(rows)
def test_json_as_drf_writes_what_drfs_renderer_writes(row: dict) -> None:
    assert json_as_drf(row) == JSONRenderer().render(row)


def test_line_separators_are_escaped_as_drf_escapes_them() -> None:
    row = {"first_name": "a\u2028b\u2029c\u20ac", "at": datetime(2026, 1, 2, tzinfo=UTC)}
    body = json_as_drf(row)
    assert body == JSONRenderer().render(row)
    assert b"\\u2028" in body
    assert b"\\u2029" in body
    assert "€".encode() in body


def test_whole_seconds_and_uuids() -> None:
    row = {"id": uuid.UUID(int=1), "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}
    assert json_as_drf(row) == (
        b'{"id":"00000000-0000-0000-0000-000000000001","at":"2026-01-02T03:04:05Z"}'
    )
