"""What django-csp's middleware costs a request it sends no header on, beside a whole
``GET /health`` through Django in the same run.

Run (from the project root, a few seconds; any DATABASE_URL and REDIS_URL, untouched)::

    .venv/bin/python bench/csp_middleware.py

Three timings, each the best of five rounds of ``--requests`` calls: django-csp's
``CSPMiddleware`` around a view that returns at once, for a path its
``EXCLUDE_URL_PREFIXES`` leaves out (it builds the policy, then drops it); the service's
``ContentSecurityPolicyMiddleware`` on the same path (it skips the JSON API first); and
``GET /health`` through the test client, the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from csp.middleware import CSPMiddleware  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402

from config.middleware import ContentSecurityPolicyMiddleware  # noqa: E402


def best(call: object, number: int) -> float:
    """Microseconds per call, the best of five rounds."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    settings.CONTENT_SECURITY_POLICY = {
        **settings.CONTENT_SECURITY_POLICY,
        "EXCLUDE_URL_PREFIXES": ["/v1/"],
    }
    response = HttpResponse()
    factory = RequestFactory()
    request = factory.get("/v1/users/3f2c9a4e-8b1d-4c6f-9e2a-7d5b1c0f4a83")
    plain = CSPMiddleware(lambda r: response)
    scoped = ContentSecurityPolicyMiddleware(lambda r: response)
    client = Client()
    figures = {
        "django-csp, excluded path": best(lambda: plain(request), args.requests),
        "ContentSecurityPolicyMiddleware, same path": best(lambda: scoped(request), args.requests),
        "GET /health through Django (reference)": best(
            lambda: client.get("/health"), args.requests // 5
        ),
    }
    reference = figures["GET /health through Django (reference)"]
    for name, micros in figures.items():
        print(f"{name:45} {micros:8.1f} µs  {micros / reference:5.2f} of /health")


if __name__ == "__main__":
    main()
