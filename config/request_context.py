"""Request and correlation ids, and the one log line of each handled request.

Every response carries ``X-Request-ID`` (the client's when it is sane, else a new one)
and ``X-Correlation-ID``: the client's (a UUID; anything else is a 400), or a new one.
The correlation id is left on the request as ``request.correlation_id``, where the
metadata context of commands (``eventstore.api.command_context``) takes it, so the
events a request records carry it. Both ids are bound to the log context for every
line written while the request is handled.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.functional import SimpleLazyObject, empty

from config.errors import PROBLEM_CONTENT_TYPE, problem

REQUEST_ID_HEADER = "X-Request-ID"
CORRELATION_ID_HEADER = "X-Correlation-ID"
# Sane: short, and nothing a log reader or a terminal would trip on.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
PROBES = ("/health", "/ready")

logger = structlog.stdlib.get_logger("config.requests")


def request_id_of(request: HttpRequest) -> str:
    """The client's request id if it is sane, else a new UUID."""
    raw = request.headers.get(REQUEST_ID_HEADER, "")
    return raw if _SANE_REQUEST_ID.fullmatch(raw) else str(uuid.uuid4())


def _actor(request: HttpRequest) -> str | None:
    """Who made the request, by id, if authentication already ran (never forced here:
    that would cost a session lookup on requests that had none)."""
    user = request.__dict__.get("user")
    if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
        return None
    return f"user:{user.pk}" if user.is_authenticated else "anonymous"


def _route(request: HttpRequest) -> str | None:
    match = getattr(request, "resolver_match", None)
    return f"/{match.route}" if match is not None and match.route else None


def _subject(request: HttpRequest) -> str | None:
    """The user the URL names, when it is an id (a URL may hold anything, an address too)."""
    match = getattr(request, "resolver_match", None)
    raw = match.kwargs.get("user_id") if match is not None else None
    try:
        return str(uuid.UUID(raw)) if raw else None
    except ValueError:
        return None


class RequestContextMiddleware:
    """First in the chain, so that even the guards' answers carry the ids."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = request_id_of(request)
        raw = request.headers.get(CORRELATION_ID_HEADER)
        correlation: uuid.UUID | None
        try:
            correlation = uuid.UUID(raw) if raw else uuid.uuid4()
        except ValueError:
            correlation = None
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, correlation_id=str(correlation) if correlation else None
        ):
            if correlation is None:
                body = problem(400, f"{CORRELATION_ID_HEADER} must be a UUID, or left out.")
                response = JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
            else:
                request.correlation_id = correlation
                response = self.get_response(request)
                response[CORRELATION_ID_HEADER] = str(correlation)
            response[REQUEST_ID_HEADER] = request_id
            # A healthy probe every few seconds is no news: it shows at DEBUG.
            probe = request.path in PROBES and response.status_code == 200
            (logger.debug if probe else logger.info)(
                "request",
                method=request.method,
                route=_route(request),
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                actor=_actor(request),
                user_id=_subject(request),
            )
        return response
