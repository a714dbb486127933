"""Personal data in an append-only store: a key per person, destroyed to forget them.

Events never change, so personal fields (declared on the event class, see
:mod:`eventstore.types`) are stored encrypted with AES-GCM under a key of their data
subject's own (crypto-shredding). Destroying that key makes every copy of those
fields, in the events and in any backup of them, unreadable for good; the events, their
order and versions stay.

Person keys live in the ``personal_keys`` table, wrapped (AES-GCM again) by a master
key from ``settings.PERSONAL_DATA_MASTER_KEYS``: the first one wraps new keys, every
one listed unwraps, and :func:`rotate_master_key` re-wraps the old ones under the first.
The table can live in a database of its own (the ``personal_keys`` alias, from
``PERSONAL_KEYS_DATABASE_URL``), so that a copy of the event store alone holds no key.
On the main database it joins the caller's transaction; on its own, each statement
commits at once, a key before the events it seals (a key without events is harmless;
events without their key would read as erased).

Erasing leaves a row with no key (a tombstone), so a late or racing append can never
create a fresh key for that person: it fails with :class:`SubjectErased`.

A :class:`KeyRing` fetches each subject's key once (one query for a whole feed page or
stream) and keeps it for one unit of work only: a read, a subscriber batch, or a
command inside :func:`key_scope`. No key outlives it in a process, so an erasure is
seen by the next read everywhere.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.dispatch import Signal

from eventstore.errors import EventDecodingError, EventStoreError
from eventstore.types import NONCE_BYTES, SEALED, Opener

KEYS_ALIAS = "personal_keys"
TABLE = "personal_keys"
KEY_BYTES = 32

subject_erased = Signal()
"""Sent with ``subject`` inside the erasing transaction: drop your copies of their data."""

subject_exported = Signal()
"""Sent with ``subject`` by an export: return a dict of sections to add to the document."""


class SubjectErased(EventStoreError):
    """Personal data of an erased subject cannot be stored again."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"the personal data of {subject} has been erased; nothing new is stored")
        self.subject = subject


def keys_alias(using: str = "default") -> str:
    """The database alias of the person keys: their own database if configured."""
    return KEYS_ALIAS if KEYS_ALIAS in settings.DATABASES else using


# --- master keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class MasterKeys:
    """The configured master keys by id; ``current`` wraps new person keys."""

    current: str
    ciphers: dict[str, AESGCM]


def generate_master_key() -> str:
    """A new master key, as PERSONAL_DATA_MASTER_KEYS takes it (base64 of 32 random bytes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def master_key_id(raw: bytes) -> str:
    """A master key's name in ``personal_keys.master_key_id``: a digest, not the key."""
    return hashlib.sha256(b"master-key-id\x00" + raw).hexdigest()[:16]


def master_keys() -> MasterKeys:
    return _parse_master_keys(tuple(getattr(settings, "PERSONAL_DATA_MASTER_KEYS", ())))


@lru_cache(maxsize=8)
def _parse_master_keys(configured: tuple[str, ...]) -> MasterKeys:
    if not configured:
        raise ImproperlyConfigured(
            "PERSONAL_DATA_MASTER_KEYS is not set: personal data cannot be encrypted. Run "
            "scripts/up.sh once (it makes a development key under .data/), or set it to a "
            "key made as .env.example says"
        )
    ciphers: dict[str, AESGCM] = {}
    for position, text in enumerate(configured, 1):
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != KEY_BYTES:
            raise ImproperlyConfigured(
                f"PERSONAL_DATA_MASTER_KEYS: key {position} is not the base64 of 32 bytes"
            )
        ciphers[master_key_id(raw)] = AESGCM(raw)
    return MasterKeys(next(iter(ciphers)), ciphers)


_WRAP_CONTEXT = b"person-key\x00"


def _wrap_context(subject: str) -> bytes:
    return _WRAP_CONTEXT + subject.encode()


def _wrap(subject: str, key: bytes, masters: MasterKeys) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + masters.ciphers[masters.current].encrypt(nonce, key, _wrap_context(subject))


def _unwrap(subject: str, wrapped: bytes, master_id: str, masters: MasterKeys) -> bytes:
    cipher = masters.ciphers.get(master_id)
    if cipher is None:
        raise ImproperlyConfigured(
            f"the key of {subject} is wrapped by master key {master_id}, which is not in "
            "PERSONAL_DATA_MASTER_KEYS: add it back (keep old keys listed until "
            "rotate_master_key has re-wrapped everything)"
        )
    try:
        return cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_context(subject))
    except InvalidTag:
        raise ImproperlyConfigured(
            f"the key of {subject} does not unwrap with master key {master_id}: "
            "the configured key is not the one it was wrapped with"
        ) from None


# --- person keys -----------------------------------------------------------------------

# Statements for one subject (a command, a stream) and for many (a feed page). Many
# subjects travel as one JSON text: psycopg builds an array parameter in Python, element
# by element, which took longer than the statement takes PostgreSQL to run.
_MANY = "(SELECT jsonb_array_elements_text(%s::jsonb))"
_SELECT_SQL = {
    True: f"SELECT subject, wrapped_key, master_key_id FROM {TABLE} WHERE subject = %s",
    False: f"SELECT subject, wrapped_key, master_key_id FROM {TABLE} WHERE subject IN {_MANY}",
}

# One round trip to create the keys that are missing and return every one. The SELECT
# reads the statement's snapshot, so it never returns the rows the INSERT adds; a key
# another transaction committed meanwhile is missing from both (looked up again).
_ENSURE_TEMPLATE = f"""
    WITH created AS (
        INSERT INTO {TABLE} (subject, wrapped_key, master_key_id, created_at)
        {{rows}}
        ON CONFLICT (subject) DO NOTHING
        RETURNING subject, wrapped_key, master_key_id
    )
    SELECT * FROM created
    UNION ALL
    SELECT subject, wrapped_key, master_key_id FROM {TABLE} WHERE subject {{match}}
"""
_ENSURE_SQL = {
    True: _ENSURE_TEMPLATE.format(rows="VALUES (%s, %s, %s, now())", match="= %s"),
    False: _ENSURE_TEMPLATE.format(
        rows="SELECT s, k, %s, now() FROM unnest(%s::text[], %s::bytea[]) AS t(s, k)",
        match=f"IN {_MANY}",
    ),
}

# The key of the subject of a stream's first event, if it is sealed ('<subject>:<token>',
# split at the last colon as the reader does). A stream read sends it in the same round
# trip as its own statement: a stream's events are mostly one person's.
_STREAM_KEY_SQL = f"""
    SELECT subject, wrapped_key, master_key_id FROM {TABLE}
    WHERE subject = (SELECT substring(data->>'{SEALED}' FROM '^(.*):[^:]*$') FROM events
                     WHERE stream_id = %s ORDER BY version LIMIT 1)
"""

_ERASE_SQL = f"""
    INSERT INTO {TABLE} (subject, wrapped_key, master_key_id, created_at, erased_at)
    VALUES (%s, NULL, '', now(), now())
    ON CONFLICT (subject) DO UPDATE
    SET wrapped_key = NULL, master_key_id = '',
        erased_at = COALESCE({TABLE}.erased_at, EXCLUDED.erased_at)
"""


@contextlib.contextmanager
def _cursor(alias: str) -> Iterator[psycopg.Cursor]:
    """A psycopg cursor on Django's connection (same transaction), its statements prepared
    once per session: these run for every command and every subscriber page, as the
    append does (:func:`eventstore.store._execute_append`)."""
    connection = connections[alias]
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def _select(cursor: psycopg.Cursor, subjects: list[str]) -> list[Any]:
    one = len(subjects) == 1
    cursor.execute(
        _SELECT_SQL[one], subjects if one else [_json(subjects)], prepare=True, binary=True
    )
    return cursor.fetchall()


def _json(subjects: list[str]) -> str:
    return msgspec.json.encode(subjects).decode()


class KeyRing:
    """The keys of the subjects one unit of work touches, each fetched and unwrapped once.

    A subject without a key (never had one, or erased) maps to None: its sealed fields
    read as erased. Appending for it creates its key, unless it was erased.
    """

    def __init__(self, using: str = "default") -> None:
        self.alias = keys_alias(using)
        self._ciphers: dict[str, AESGCM | None] = {}

    def prefetch(self, subjects: Iterable[str]) -> None:
        """Fetch, in one query, the keys of ``subjects`` not fetched yet."""
        missing = {subject for subject in subjects if subject not in self._ciphers}
        if not missing:
            return
        with _cursor(self.alias) as cursor:
            rows = _select(cursor, list(missing))
        self._add(rows)
        for subject in missing:
            self._ciphers.setdefault(subject, None)

    def ensure(self, subjects: Iterable[str]) -> None:
        """Have a key for each of ``subjects``, creating missing ones; raises SubjectErased."""
        missing = sorted({s for s in subjects if self._ciphers.get(s) is None})
        if not missing:
            return
        masters = master_keys()
        wrapped = [_wrap(subject, AESGCM.generate_key(256), masters) for subject in missing]
        if len(missing) == 1:
            params = [missing[0], wrapped[0], masters.current, missing[0]]
        else:
            params = [masters.current, missing, wrapped, _json(missing)]
        with _cursor(self.alias) as cursor:
            cursor.execute(_ENSURE_SQL[len(missing) == 1], params, prepare=True)
            rows = cursor.fetchall()
            found = {row[0] for row in rows}
            if len(found) < len(missing):  # created by a transaction that committed meanwhile
                rows += _select(cursor, [s for s in missing if s not in found])
        self._add(rows)
        for subject in missing:
            if self._ciphers.get(subject) is None:
                raise SubjectErased(subject)

    def stream_key_sql(self, using: str) -> str | None:
        """A statement to send with a read of stream ``%s`` on ``using``, its rows for
        :meth:`add`: the key of the stream's first sealed subject. None when the keys live
        in a database of their own."""
        return _STREAM_KEY_SQL if self.alias == using else None

    def add(self, rows: Iterable[tuple[str, bytes | None, str]]) -> None:
        """Hold the keys of these ``personal_keys`` rows (subject, wrapped key, master id)."""
        self._add(rows)

    def forget(self, subject: str) -> None:
        """The subject's key is gone: from now on this ring reads its fields as erased."""
        self._ciphers[subject] = None

    def _add(self, rows: Iterable[tuple[str, bytes | None, str]]) -> None:
        ciphers = self._ciphers
        masters = None
        for subject, wrapped, master_id in rows:
            if wrapped is None:
                ciphers[subject] = None
                continue
            if masters is None:
                masters = master_keys()
            master = masters.ciphers.get(master_id)
            try:  # _unwrap inline: a feed page unwraps the keys of hundreds of people
                key = master.decrypt(  # type: ignore[union-attr]
                    wrapped[:NONCE_BYTES],
                    wrapped[NONCE_BYTES:],
                    _WRAP_CONTEXT + subject.encode(),
                )
            except (AttributeError, InvalidTag):  # no such master key, or not its key
                key = _unwrap(subject, bytes(wrapped), master_id, masters)  # raises as it should
            ciphers[subject] = AESGCM(key)

    def seal(self, subject: str, context: str, plaintext: bytes) -> str:
        cipher = self._ciphers.get(subject)
        if cipher is None:
            self.ensure([subject])
            cipher = self._ciphers[subject]
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, plaintext, f"{context}\x00{subject}".encode())  # type: ignore[union-attr]
        return binascii.b2a_base64(nonce + sealed, newline=False).decode()

    def _cipher(self, subject: str) -> AESGCM | None:
        try:
            return self._ciphers[subject]
        except KeyError:
            self.prefetch([subject])
            return self._ciphers[subject]

    def opener(self, subject: str, context: str) -> Opener | None:
        """The subject's ``decrypt`` and the associated data of ``context``'s tokens, for
        a read to reuse over its events; None when the subject's key is gone."""
        cipher = self._cipher(subject)
        if cipher is None:
            return None
        return cipher.decrypt, f"{context}\x00{subject}".encode()

    def open(self, subject: str, context: str, token: str) -> bytes | None:
        cipher = self._cipher(subject)
        if cipher is None:
            return None
        try:
            raw = binascii.a2b_base64(token)
            return cipher.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{context}\x00{subject}".encode()
            )
        except (InvalidTag, binascii.Error):
            # Tampered with, moved to another event or person, or not a token: never
            # "erased", which would hide it.
            raise EventDecodingError(
                f"sealed {context} of {subject} does not open with its subject's key"
            ) from None


_scope: contextvars.ContextVar[KeyRing | None] = contextvars.ContextVar(
    "eventstore_key_scope", default=None
)


def keyring(using: str = "default") -> KeyRing:
    """The key ring of the open :func:`key_scope`, or a new one for a single read."""
    ring = _scope.get()
    if ring is not None and ring.alias == keys_alias(using):
        return ring
    return KeyRing(using)


@contextlib.contextmanager
def key_scope(using: str = "default") -> Iterator[KeyRing]:
    """Share one key ring among the reads and appends inside (a command: load, then append).

    Keep it to one unit of work: keys fetched inside are not fetched again, so an
    erasure committed meanwhile elsewhere is seen by the next scope, not this one.
    """
    ring = _scope.get()
    if ring is not None and ring.alias == keys_alias(using):
        yield ring
        return
    ring = KeyRing(using)
    token = _scope.set(ring)
    try:
        yield ring
    finally:
        _scope.reset(token)


def erase_subject(subject: str, using: str = "default") -> None:
    """Destroy the subject's key for good (idempotent), leaving a tombstone.

    On the main database this joins the caller's transaction; on a keys database of its
    own it commits at once, before the caller's transaction: a failure after it leaves
    the person already unreadable, and running the erasure again completes it.
    """
    with connections[keys_alias(using)].cursor() as cursor:
        cursor.execute(_ERASE_SQL, [subject])
    ring = _scope.get()
    if ring is not None:
        ring.forget(subject)


def is_erased(subject: str, using: str = "default") -> bool:
    with connections[keys_alias(using)].cursor() as cursor:
        cursor.execute(f"SELECT wrapped_key IS NULL FROM {TABLE} WHERE subject = %s", [subject])
        row = cursor.fetchone()
    return bool(row and row[0])


# --- keyed hashes ------------------------------------------------------------------------


def keyed_hash(value: str) -> str:
    """HMAC-SHA-256 of ``value`` under PERSONAL_DATA_HMAC_KEY: equal values compare equal,
    but the table that holds it (a uniqueness reservation, say) does not hold the value."""
    secret = getattr(settings, "PERSONAL_DATA_HMAC_KEY", "")
    if not secret:
        raise ImproperlyConfigured(
            "PERSONAL_DATA_HMAC_KEY is not set: run scripts/up.sh once (it makes a "
            "development key under .data/), or set it to a long random string"
        )
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()
