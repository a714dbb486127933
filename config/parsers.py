"""Request body parsers of the API."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


def _has_lone_surrogate(data: Any) -> bool:
    """Whether any key or string value, at any depth, holds a lone surrogate.

    JSON may spell one (``"\\ud800"``), and ``json`` decodes it into a ``str`` that
    cannot be encoded as UTF-8: storing it, logging it or echoing it in an error fails.
    Iterative, so that a document as deep as ``json`` accepts cannot overflow the stack.
    """
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, answering 400 (not 500) to JSON it cannot use.

    ``json`` raises RecursionError, not ValueError, for ``[[[[...]]]]`` a few thousand
    levels deep; such a body fits well inside the size limit. A lone surrogate is valid
    JSON syntax but no Unicode character.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        if _has_lone_surrogate(data):
            raise ParseError(
                "JSON parse error - a string or key holds a lone surrogate (\\ud800 to "
                "\\udfff without its pair), which is not a Unicode character."
            )
        return data
