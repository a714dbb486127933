"""Field rules of a user: the aggregate (the authority) applies them; reads that look a
user up by email use the same canonical form."""

from __future__ import annotations

import unicodedata

import idna
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 254
_email_validator = EmailValidator()
# Direction overrides can make a name display as something else; letters never need them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def canonical_domain(domain: str) -> str | None:
    """The one spelling of an email domain, or None if it is no valid domain name.

    IDNA (UTS 46 mapping) then back to Unicode: ``exämple.com``, ``EXÄMPLE.com``, the
    decomposed ``exa\u0308mple.com`` and the ASCII form ``xn--exmple-cua.com`` all name
    one domain, so they must be one address for uniqueness. Unicode, not the ASCII form,
    because it is what the user typed and reads; Django's mail sending encodes it.
    """
    if domain.startswith("["):  # an address literal, e.g. [192.0.2.1]: no IDNA
        return domain
    try:
        return idna.decode(idna.encode(domain, uts46=True))
    except UnicodeError:  # idna.IDNAError and its kinds
        return None


def canonical_email(value: str) -> str | None:
    """Trimmed, lower-cased, NFC, the domain in its canonical spelling; None if the domain
    is invalid. Two spellings of one address give one result."""
    local, at, domain = unicodedata.normalize("NFC", value.strip().lower()).rpartition("@")
    if not at:
        return local + domain  # no domain at all: the validator names the problem
    domain = canonical_domain(domain)
    return None if domain is None else f"{local}@{domain}"


def normalize_email(value: object) -> tuple[str | None, list[str]]:
    """The canonical form (:func:`canonical_email`), so uniqueness ignores case and the
    spelling of internationalised domains; or the problems."""
    if not isinstance(value, str):
        return None, ["Enter an email address as a string."]
    email = canonical_email(value)
    if email is None:
        return None, ["The domain is not a valid domain name; check its spelling."]
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
