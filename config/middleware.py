"""Request guards that must run before any view reads the body, and the
Content-Security-Policy of the pages a browser renders."""

from collections.abc import Callable

from csp.middleware import CSPMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from config.errors import PROBLEM_CONTENT_TYPE, problem


class BodySizeLimitMiddleware:
    """Answer 413 to bodies over DATA_UPLOAD_MAX_MEMORY_SIZE before anything parses them.

    Django checks that limit only when ``request.body`` is read; DRF's parsers read the
    stream directly, so the check is made here, from the declared length.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            body = problem(400, "The Content-Length header is not a number.")
            return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
        if limit is not None and length > limit and not request.path.startswith("/admin/"):
            body = problem(413, f"The request body is {length} bytes; the limit is {limit}.")
            return JsonResponse(body, status=413, content_type=PROBLEM_CONTENT_TYPE)
        return self.get_response(request)


class NulByteGuardMiddleware:
    """Answer 400 to a URL holding a NUL byte, in its path or its query string.

    No id, filter or search term of this service contains one, and PostgreSQL refuses
    NUL in text: passed on, ``?category=%00`` or ``/admin/.../%00/change/`` would reach
    the database through some ORM filter and fail there as a 500.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            body = problem(400, "The URL holds a NUL byte (%00); no id or filter here has one.")
            return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
        return self.get_response(request)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware (``CONTENT_SECURITY_POLICY``), for the pages a browser
    renders (the admin, the API docs), not the JSON API or the probes.

    Its ``EXCLUDE_URL_PREFIXES`` still builds the policy for every response and only then
    leaves it out, which costs a JSON request several times what the header is worth
    there (docs/framework-bends.md); this skips those paths first.
    """

    skipped = ("/v1/", "/health", "/ready")

    def process_request(self, request: HttpRequest) -> None:
        if not request.path_info.startswith(self.skipped):
            super().process_request(request)

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if request.path_info.startswith(self.skipped):
            return response
        return super().process_response(request, response)
