"""Event classes used only by the tests of the generic event store."""

from decimal import Decimal
from uuid import UUID

from eventstore.types import domain_event, upcaster


@domain_event("test.Noted")
class Noted:
    text: str
    n: int = 0


@domain_event("test.Priced")
class Priced:
    item: UUID
    price: Decimal


@domain_event("test.Renamed", version=2)
class Renamed:
    first_name: str
    last_name: str


@upcaster("test.Renamed", from_version=1)
def _split_full_name(data: dict) -> dict:
    first, _, last = data.pop("name").partition(" ")
    return {**data, "first_name": first, "last_name": last}
