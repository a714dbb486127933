"""Content negotiation with a shortcut for the requests nearly every API client sends.

DRF parses the ``Accept`` header into media types and ranks them on every request; for
a client that sends none, ``*/*`` or ``application/json``, and no query string (so no
``?format=``), the answer is always the first renderer with its own media type when that
is JSON. Answering that directly is a measured bend (docs/framework-bends.md); any other
request is negotiated by DRF as before (tests/unit/test_renderers.py compares the two).
"""

from __future__ import annotations

from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer

_PLAIN_ACCEPT = frozenset(("", "*/*", "application/json"))


class ContentNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Any, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        meta = request.META
        if (
            not format_suffix
            and not meta.get("QUERY_STRING")
            and meta.get("HTTP_ACCEPT", "") in _PLAIN_ACCEPT
            and renderers
            and renderers[0].media_type == "application/json"
        ):
            return renderers[0], "application/json"
        return super().select_renderer(request, renderers, format_suffix)
