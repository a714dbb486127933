"""Size bounds for the per-process tables that spare a request its round trips.

A process keeps a few tables in plain dicts (checked tokens, rate-limit leases): reading
one costs a dict lookup, where Django's local-memory cache pickles every value, and
clients are many, so each table is bounded. Python dicts keep insertion order, which is
enough for "oldest first": an entry is re-inserted when it is renewed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def make_room(entries: dict[K, V], limit: int, expired: Callable[[V], bool]) -> None:
    """Leave fewer than ``limit`` entries: the expired ones go first, then the oldest.

    Call it, holding the table's lock, before inserting one entry. Sweeping only when
    the table is full keeps the common insert O(1).
    """
    if len(entries) < limit:
        return
    for key in [key for key, value in entries.items() if expired(value)]:
        del entries[key]
    while len(entries) >= limit:
        del entries[next(iter(entries))]
