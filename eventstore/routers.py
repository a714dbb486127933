"""Database routing of the person keys: their own database when one is configured.

With ``PERSONAL_KEYS_DATABASE_URL`` set, the settings add the ``personal_keys`` alias:
the keys table is created and used only there, and nothing else is; without it, every
model stays on ``default``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from eventstore.personal import KEYS_ALIAS

_LABEL = "eventstore.personalkey"


def _separate() -> bool:
    return KEYS_ALIAS in settings.DATABASES


class PersonalKeysRouter:
    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return KEYS_ALIAS if _separate() and model._meta.label_lower == _LABEL else None

    db_for_write = db_for_read

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if not _separate():
            return None
        is_key = f"{app_label}.{model_name}" == _LABEL
        if db == KEYS_ALIAS:
            return is_key
        return False if is_key else None
