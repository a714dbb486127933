"""JSON bodies for the hottest read, byte for byte what DRF's ``JSONRenderer`` writes.

Rendering through DRF costs a ``Response``, the renderer's settings lookups and
``json.dumps`` with DRF's encoder (a Python call for every UUID and datetime); what this
saves is in docs/framework-bends.md. msgspec writes the same bytes in C for the values a
read-model row holds (str, int, None, UUID, UTC datetimes):

- compact separators and raw UTF-8, as DRF's ``COMPACT_JSON`` and ``UNICODE_JSON``;
- UTC datetimes in ISO 8601 with ``Z`` (DRF turns ``+00:00`` into ``Z``);
- U+2028 and U+2029 escaped, as DRF does, since JavaScript source cannot hold them raw.

tests/unit/test_renderers.py checks the equality on generated rows.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder(uuid_format="canonical")

# UTF-8 of U+2028 and U+2029 start with these bytes; so do other characters, so the
# check only decides whether the two replacements are worth running.
_LINE_SEPARATORS_LEAD = b"\xe2\x80"


def json_as_drf(data: Any) -> bytes:
    """``data`` as DRF's default ``JSONRenderer`` would render it, for plain values."""
    body = _encoder.encode(data)
    if _LINE_SEPARATORS_LEAD in body:
        body = body.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return body
