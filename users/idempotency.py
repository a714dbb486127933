"""``Idempotency-Key`` on POST: the first response is stored and replayed for repeats.

The key is claimed (a row with a unique constraint) in the same transaction as the
command, before it runs: a concurrent repeat waits for the first to commit and then
replays its response, so the command runs once whatever the timing. Failed requests
(non-2xx) release the key, so a corrected retry can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import IntegrityError, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import Unprocessable
from users.models import IdempotentRequest

HEADER = "Idempotency-Key"
_REPLAYED_HEADERS = ("Location", "ETag")


def _fingerprint(request: Request) -> str:
    canonical = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def _replay(stored: IdempotentRequest, fingerprint: str) -> Response:
    if stored.request_hash != fingerprint:
        raise Unprocessable(
            f"Idempotency-Key {stored.key!r} was already used with a different request; "
            "use a new key for a new request."
        )
    response = Response(stored.body, status=stored.status_code, headers=stored.headers)
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate a POST handler of an APIView."""

    @wraps(view)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view(self, request, *args, **kwargs)
        key = key.strip()
        if not key or len(key) > 255 or not key.isprintable():
            from rest_framework.exceptions import ValidationError

            raise ValidationError({HEADER: ["Use 1-255 printable characters."]})
        client = f"user:{request.user.pk}"
        fingerprint = _fingerprint(request)
        with transaction.atomic():
            try:
                with transaction.atomic():
                    claim = IdempotentRequest.objects.create(
                        client=client, key=key, request_hash=fingerprint, status_code=0, body={}
                    )
            except IntegrityError:
                stored = IdempotentRequest.objects.get(client=client, key=key)
                return _replay(stored, fingerprint)
            response = view(self, request, *args, **kwargs)
            if 200 <= response.status_code < 300:
                claim.status_code = response.status_code
                claim.body = response.data
                claim.headers = {h: response[h] for h in _REPLAYED_HEADERS if h in response}
                claim.save(update_fields=["status_code", "body", "headers"])
            else:
                transaction.set_rollback(True)
            return response

    return wrapper
