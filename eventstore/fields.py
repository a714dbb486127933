"""PostgreSQL's ``xid8`` (a 64-bit transaction id) as a Django field."""

from typing import Any

from django.db import models


class TransactionIdField(models.Field):
    """The id of the transaction that wrote a row; it orders the gap-safe feed."""

    description = "PostgreSQL 64-bit transaction id (xid8)"

    def db_type(self, connection: Any) -> str:
        return "xid8"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int | None:
        return None if value is None else int(value)

    def to_python(self, value: Any) -> int | None:
        return None if value is None else int(value)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        return None if value is None else str(int(value))
