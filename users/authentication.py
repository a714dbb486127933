"""Bearer tokens for API clients: ``Authorization: Bearer <token>``.

Only a SHA-256 of each token is stored, so a database leak reveals no usable token;
looking a token up by its hash also compares nothing secret character by character.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from users.models import ApiToken

TOKEN_BYTES = 32
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for ``user``; the plain token is returned once and never stored."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    record = ApiToken.objects.create(
        user=user, name=name, key_hash=hash_token(token), prefix=token[:8]
    )
    return record, token


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
        record = ApiToken.objects.select_related("user").filter(key_hash=hash_token(token)).first()
        if record is None or not record.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        now = timezone.now()
        if record.last_used_at is None or now - record.last_used_at > _LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=record.pk).update(last_used_at=now)
        return record.user, record

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


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
