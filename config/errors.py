"""The one error shape of the API: problem details (RFC 9457) for every 4xx and 5xx.

Each app maps its domain errors to HTTP once (:func:`translates`, from its
``AppConfig.ready()``), so views stay thin and this module names no app; anything
unexpected becomes a 500 problem without a stack trace (the trace goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger("api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://users.example/problems/"

_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}

_SLUGS = {
    400: "bad-request",
    401: "not-authenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    412: "precondition-failed",
    413: "too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    428: "precondition-required",
    429: "throttled",
    500: "internal",
    503: "unavailable",
}


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."


class PreconditionFailed(exceptions.APIException):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "The resource has changed since the version given in If-Match."


class Unprocessable(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request cannot be processed."


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The database is unavailable; retry shortly."


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."


def problem(
    status_code: int, detail: str, *, errors: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + _SLUGS.get(status_code, str(status_code)),
        "title": _TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


Translator = Callable[[Any], Exception]
# (error classes, their translation), in registration order: the first that matches wins,
# so an app registers a subclass before its base.
_translators: list[tuple[tuple[type[Exception], ...], Translator]] = []


def translates(*error_classes: type[Exception]) -> Callable[[Translator], Translator]:
    """Register ``translate(error)`` as the API exception (or DRF one) for these errors."""

    def register(translate: Translator) -> Translator:
        _translators.append((error_classes, translate))
        return translate

    return register


def _translate(exc: Exception) -> Exception:
    """Domain and store errors as the API exceptions they mean."""
    for error_classes, translate in _translators:
        if isinstance(exc, error_classes):
            return translate(exc)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, (OperationalError, InterfaceError)):
        return ServiceUnavailable()
    return exc


def _flatten_errors(data: Any) -> dict[str, list[str]]:
    if isinstance(data, dict):
        flat: dict[str, list[str]] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                for sub, messages in _flatten_errors(value).items():
                    flat[f"{key}.{sub}"] = messages
            else:
                items = value if isinstance(value, list) else [value]
                flat[str(key)] = [str(item) for item in items]
        return flat
    items = data if isinstance(data, list) else [data]
    return {"non_field_errors": [str(item) for item in items]}


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's exception handler, answering every error as problem details."""
    exc = _translate(exc)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        if isinstance(exc, DatabaseError):
            logger.exception("database error in %s", context.get("view"))
        else:
            logger.exception("unhandled error in %s", context.get("view"))
        response = Response(status=500)
        body = problem(500, "Something went wrong on our side; it has been logged.")
    elif isinstance(exc, exceptions.ValidationError):
        errors = _flatten_errors(exc.detail)
        detail = errors.pop("detail", None) or errors.get("non_field_errors")
        body = problem(
            response.status_code,
            detail[0] if detail else "Some fields are invalid; see errors.",
            errors=errors or None,
        )
    else:
        detail = getattr(exc, "detail", str(exc))
        body = problem(response.status_code, str(detail))
        extra = getattr(exc, "problem_extra", None)
        if extra:
            body.update(extra)
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    # Views that render YAML or HTML (the schema and docs pages) would otherwise send the
    # problem in that format under a JSON content type.
    request = context.get("request")
    if request is not None:
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = PROBLEM_CONTENT_TYPE
    return response


def _json_problem(request: HttpRequest, status_code: int, detail: str) -> JsonResponse:
    return JsonResponse(
        problem(status_code, detail), status=status_code, content_type=PROBLEM_CONTENT_TYPE
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_problem(request, 404, f"There is nothing at {request.path}.")


@csrf_exempt  # a 404 whatever the method: a POST without a CSRF token too
def api_not_found(request: HttpRequest) -> JsonResponse:
    """Any URL under /v1/ that no endpoint has, with a hint for a trailing slash."""
    detail = f"There is nothing at {request.path}."
    without_slash = request.path.rstrip("/")
    if without_slash != request.path:
        try:
            if resolve(without_slash).func is not api_not_found:
                detail += f" The API's URLs end without a slash: {without_slash}"
        except Resolver404:
            pass
    return _json_problem(request, 404, detail)


def server_error(request: HttpRequest) -> JsonResponse:
    return _json_problem(request, 500, "Something went wrong on our side; it has been logged.")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        return _json_problem(request, 413, "The request body is too large.")
    return _json_problem(request, 400, "The request is malformed.")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_problem(request, 403, "You do not have permission to do this.")
