"""Bearer tokens for API clients: ``Authorization: Bearer <token>``.

Only a SHA-256 of each token is stored, so a database leak reveals no usable token;
looking a token up by its hash also compares nothing secret character by character.

Each process remembers a token it has checked for ``API_TOKEN_CACHE_SECONDS`` (5 s), so
that a client's steady traffic costs no token query per request. That is the bound on
revocation: a token deleted, or a user deactivated, in this process stops working at
once (signals drop the entries); in every other process within that many seconds.

The remembered tokens are a plain dict, not Django's local-memory cache: that cache
pickles every value in and out, a token and its user on every request (what the table
saves is in docs/framework-bends.md). The price is that requests share one
token record and one user object; they are treated as read-only (a renewed token is
stored as a fresh copy), and nothing on the request path changes a user.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from config.bounded import make_room
from config.throttling import AnonRateThrottle
from users.models import ApiToken

TOKEN_BYTES = 32
_LAST_USED_RESOLUTION = timedelta(minutes=1)

MAX_CHECKED_TOKENS = 10_000
"""The most tokens one process remembers; the oldest checked are forgotten first."""

# Token hash -> (time.monotonic() deadline, the token with its user). Reads take no lock
# (a dict lookup is atomic); writes do, so that make_room sees a consistent table.
_checked_tokens: dict[str, tuple[float, ApiToken]] = {}
_checked_lock = threading.Lock()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    user: AbstractBaseUser,
    name: str = "",
    *,
    expires_at: datetime | None = None,
    read_only: bool = False,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; the plain token is returned once and never stored."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    record = ApiToken.objects.create(
        user=user,
        name=name,
        key_hash=hash_token(token),
        prefix=token[:8],
        expires_at=expires_at,
        scope=ApiToken.Scope.READ if read_only else ApiToken.Scope.READ_WRITE,
    )
    return record, token


def forget_checked_tokens() -> None:
    """Make this process look every token up again on its next use."""
    with _checked_lock:
        _checked_tokens.clear()


def _forget(key_hash: str) -> None:
    with _checked_lock:
        _checked_tokens.pop(key_hash, None)


def _remember(key_hash: str, expires: float, record: ApiToken) -> None:
    with _checked_lock:
        _checked_tokens.pop(key_hash, None)  # re-inserted, so it counts as the newest
        now = time.monotonic()
        make_room(_checked_tokens, MAX_CHECKED_TOKENS, lambda entry: entry[0] <= now)
        _checked_tokens[key_hash] = (expires, record)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[AbstractBaseUser, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Bearer <token>'."
            )
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        key_hash = hash_token(token)
        cached = _checked_tokens.get(key_hash)
        if cached is not None and cached[0] > time.monotonic():
            expires, record = cached
        else:
            # A token not checked lately costs a query: an address that has sent its
            # anonymous rate of failures is refused before it can cost another.
            limit = AnonRateThrottle()
            if limit.exhausted(request):
                raise exceptions.Throttled(limit.wait())
            record = ApiToken.objects.select_related("user").filter(key_hash=key_hash).first()
            if record is None or not record.user.is_active or _expired(record):
                limit.allow_request(request, None)  # the failure counts
                raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
            expires = time.monotonic() + settings.API_TOKEN_CACHE_SECONDS
            cached = None
        now = timezone.now()
        if record.expires_at is not None and record.expires_at <= now:
            _forget(key_hash)
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        if record.last_used_at is None or now - record.last_used_at > _LAST_USED_RESOLUTION:
            if not ApiToken.objects.filter(pk=record.pk).update(last_used_at=now):
                # Deleted since this process remembered it: the write noticed first.
                _forget(key_hash)
                raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
            if cached is not None:
                record = copy.copy(record)  # other requests may hold the remembered one
            record.last_used_at = now
            cached = None
        if cached is None and expires > time.monotonic():
            # The entry keeps the deadline of its lookup, so refreshing last_used_at
            # never stretches the revocation bound.
            _remember(key_hash, expires, record)
        return record.user, record

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


def _expired(record: ApiToken) -> bool:
    return record.expires_at is not None and record.expires_at <= timezone.now()


class TokenScopeAllows(permissions.BasePermission):
    """A read-only token may read (GET, HEAD, OPTIONS) and nothing else."""

    message = "This API token is read-only: it may read (GET), not write."

    def has_permission(self, request: Any, view: Any) -> bool:
        token = request.auth
        if isinstance(token, ApiToken) and token.read_only:
            return request.method in permissions.SAFE_METHODS
        return True


@receiver(post_save, sender=ApiToken, dispatch_uid="users.api_token_changed")
@receiver(post_delete, sender=ApiToken, dispatch_uid="users.api_token_deleted")
def _forget_token(sender: type, instance: ApiToken, **kwargs: Any) -> None:
    _forget(instance.key_hash)


@receiver(post_save, sender=get_user_model(), dispatch_uid="users.token_user_changed")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="users.token_user_deleted")
def _forget_user_tokens(sender: type, **kwargs: Any) -> None:
    # Deactivating a user revokes their tokens; users change rarely, so forget them all.
    forget_checked_tokens()


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents the bearer tokens in the OpenAPI schema."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `manage.py create_api_token <username>`.",
        }
