"""Bad input to every admin URL: no 500, whoever asks.

Every route the admin registers (each model's pages and its own views: the live tail,
the dashboard, subscriber operations), each path parameter and each query parameter its
pages use (filters, search, ordering, paging, the live tail's cursor) gets hostile
values: NUL bytes, invalid UTF-8, SQL and path tricks, huge and odd numbers. The answer
must be a page, a redirect, or a 4xx; never a server error.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client

from tests.e2e.helpers import new_user, project

pytestmark = pytest.mark.django_db(transaction=True)

# Already percent-encoded: NUL, invalid UTF-8 (a lone surrogate's bytes, a stray byte),
# the percent sign itself, and the rest as text.
BAD_VALUES = [
    "%00",
    "user%00",
    "%ED%A0%80",
    "%FF",
    "%25",
    *(
        quote(value, safe="")
        for value in [
            "' OR '1'='1",
            "1; DROP TABLE events; --",
            "../../etc/passwd",
            "<script>alert(1)</script>",
            "-1",
            "99999999999999999999999",
            "1e309",
            "NaN",
            "\u202e",
            "x" * 3000,
            " ",
        ]
    ),
]
# Parameters the admin's own views read, beside the filters its pages link to.
KNOWN_PARAMETERS = ["q", "o", "p", "e", "all", "_changelist_filters", "_to_field", "_popup"]
VIEW_PARAMETERS = ["after", "category", "from_version", "limit"]
OK = {200, 302, 400, 403, 404, 405}


# Django's own auth admin is Django's to test.
SERVICE_APPS = {"eventstore", "users", "sagas"}


def admin_routes() -> list[str]:
    """Every admin URL pattern of the service's apps, ``{}`` where a path parameter goes."""
    routes = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in SERVICE_APPS:
            continue
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for pattern in model_admin.get_urls():
            routes.append(base + re.sub(r"<[^>]+>", "{}", str(pattern.pattern)))
    return routes


def linked_parameters(client: Client, url: str) -> set[str]:
    """The query parameters a page links to (its filters, ordering and paging)."""
    html = client.get(url).content.decode()
    found = set()
    for query in re.findall(r'href="\?([^"#]*)"', html):
        found |= {name for name, _ in parse_qsl(query.replace("&amp;", "&"))}
    return found


def get(client: Client, url: str, method: str = "get") -> Any:
    response = getattr(client, method)(url)
    assert response.status_code in OK, (method, url[:120], response.status_code)
    if response.status_code == 302:  # a missing object: back to the index, or to log in
        assert response["Location"].startswith("/admin/"), (url[:120], response["Location"])
    return response


@pytest.fixture
def clients(api) -> dict[str, Client]:
    """A superuser, and a staff member without permissions, over a few real events."""
    for _ in range(2):
        new_user(api)
    project()
    users = get_user_model().objects
    root = Client()
    root.force_login(users.create_superuser("fuzz-root", "r@example.com", "pass-12345-root"))
    staff = Client()
    staff.force_login(users.create_user("fuzz-staff", password="pass-12345-st", is_staff=True))
    return {"superuser": root, "staff": staff}


@pytest.mark.parametrize("role", ["superuser", "staff"])
@pytest.mark.slow
def test_every_admin_route_with_bad_path_values(clients, role) -> None:
    client = clients[role]
    for route in admin_routes():
        if "{}" not in route:
            continue
        for value in BAD_VALUES:
            url = route.format(*[value] * route.count("{}"))
            get(client, url)
            if route.endswith(("/retry/", "/replay/", "/delete/", "/change/")):
                get(client, url, "post")


@pytest.mark.slow
def test_every_admin_page_with_bad_query_values(clients) -> None:
    client = clients["superuser"]
    pages = [route for route in admin_routes() if "{}" not in route and "add/" not in route]
    assert "/admin/eventstore/event/tail/feed/" in pages
    for page in pages:
        if page.count("/") == 4:  # a model's list: Django's parameters and its filters
            names = set(KNOWN_PARAMETERS) | linked_parameters(client, page)
        else:  # the event store's own views (live tail, its feed, dashboard)
            names = set(VIEW_PARAMETERS)
        for name in sorted(names):
            for value in BAD_VALUES:
                get(client, f"{page}?{quote(name)}={value}")


def test_the_filters_are_found(clients) -> None:
    """The query fuzzing reaches the filters the issue named (not an empty list)."""
    client = clients["superuser"]
    assert {"category", "event_type"} <= linked_parameters(client, "/admin/eventstore/event/")
    assert "status__exact" in linked_parameters(client, "/admin/users/userrecord/")
