"""config.bounded.make_room: the bound of the per-process tables (tokens, leases)."""

from __future__ import annotations

from config.bounded import make_room


def test_below_the_limit_nothing_goes() -> None:
    table = {"a": 0, "b": 0}
    make_room(table, 3, lambda value: True)
    assert table == {"a": 0, "b": 0}


def test_expired_entries_go_before_older_live_ones() -> None:
    table = {"old": 5, "expired": 0, "new": 5}
    make_room(table, 3, lambda value: value == 0)
    assert list(table) == ["old", "new"]


def test_without_expired_entries_the_oldest_go_until_one_fits() -> None:
    table = dict.fromkeys("abcde", 1)
    make_room(table, 3, lambda value: False)
    assert list(table) == ["d", "e"]
