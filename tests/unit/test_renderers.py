"""The hot read's shortcuts give what DRF gives: the same bytes, the same media type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.test import RequestFactory
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request

from config.negotiation import ContentNegotiation
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


RENDERER_SETS = [
    [JSONRenderer()],
    [JSONRenderer(), BrowsableAPIRenderer()],
    [BrowsableAPIRenderer(), JSONRenderer()],
]


@pytest.mark.parametrize("renderers", RENDERER_SETS, ids=["json", "json-first", "html-first"])
@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/v1/users/x", None),
        ("/v1/users/x", "*/*"),
        ("/v1/users/x", "application/json"),
        ("/v1/users/x", "application/json; indent=2"),
        ("/v1/users/x", "text/html, */*;q=0.8"),
        ("/v1/users/x", "application/*"),
        ("/v1/users/x?format=json", "*/*"),
        ("/v1/users/x?format=api", None),
        ("/v1/users/x?wait_for=3", "application/json"),
    ],
)
def test_negotiation_agrees_with_drf(renderers: list, path: str, accept: str | None) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(RequestFactory().get(path, **headers))
    try:
        expected = DefaultContentNegotiation().select_renderer(request, renderers)
    except Exception as exc:  # the same refusal is expected of the shortcut
        with pytest.raises(type(exc)):
            ContentNegotiation().select_renderer(request, renderers)
        return
    renderer, media_type = ContentNegotiation().select_renderer(request, renderers)
    assert (renderer, media_type) == expected
