"""Field rules of a user, shared by the aggregate (the authority) and nothing else."""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 254
_email_validator = EmailValidator()
# Direction overrides can make a name display as something else; letters never need them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalize_email(value: object) -> tuple[str | None, list[str]]:
    """Trimmed and lower-cased, so uniqueness is case-insensitive; or the problems."""
    if not isinstance(value, str):
        return None, ["Enter an email address as a string."]
    email = value.strip().lower()
    if len(email) > EMAIL_MAX_LENGTH:
        return None, [f"Use at most {EMAIL_MAX_LENGTH} characters."]
    try:
        _email_validator(email)
    except ValidationError:
        return None, ["Enter a valid email address, like ada@example.com."]
    return email, []


def normalize_name(value: object) -> tuple[str | None, list[str]]:
    """Trimmed, 1-100 characters, no control characters; or the problems."""
    if not isinstance(value, str):
        return None, ["Enter a name as a string."]
    name = value.strip()
    problems = []
    if not name:
        problems.append("Enter at least one character that is not a space.")
    if len(name) > NAME_MAX_LENGTH:
        problems.append(f"Use at most {NAME_MAX_LENGTH} characters (this has {len(name)}).")
    if any(unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS for ch in name):
        problems.append("Remove control characters (line breaks, tabs, direction overrides).")
    return (None if problems else name), problems
