"""Positions in the gap-safe feed: (transaction id, position), opaque to API clients."""

from __future__ import annotations

from dataclasses import dataclass

from eventstore.errors import InvalidCursor


@dataclass(frozen=True, order=True, slots=True)
class Cursor:
    """A point in the feed; events after it sort by (transaction_id, position)."""

    transaction_id: int
    position: int

    @classmethod
    def start(cls) -> Cursor:
        return cls(0, 0)

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """Read a token made by :meth:`__str__`; anything else is an :class:`InvalidCursor`."""
        try:
            xid_text, position_text = token.split("-")
            cursor = cls(int(xid_text, 16), int(position_text, 16))
        except (AttributeError, ValueError):
            raise InvalidCursor(f"{token!r} is not a feed cursor") from None
        if cursor.transaction_id < 0 or cursor.position < 0 or len(token) > 40:
            raise InvalidCursor(f"{token!r} is not a feed cursor")
        return cursor

    def __str__(self) -> str:
        return f"{self.transaction_id:x}-{self.position:x}"
