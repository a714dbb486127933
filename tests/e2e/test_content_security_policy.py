"""A Content-Security-Policy on every page a browser renders: the admin and the docs."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = [
    "/admin/login/",
    "/admin/",
    "/admin/eventstore/event/",
    "/admin/eventstore/event/tail/",
    "/admin/eventstore/event/dashboard/",
    "/admin/eventstore/checkpoint/",
    "/admin/users/userrecord/",
    "/admin/users/apitoken/",
    "/api/",
    "/api/redoc/",
]


@pytest.fixture
def root(transactional_db) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "r@x.org", "pw-12345-x"))
    return client


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


@pytest.mark.parametrize("url", PAGES)
def test_pages_carry_a_policy_that_allows_only_this_site(root, url) -> None:
    response = (Client() if url == "/admin/login/" else root).get(url)
    assert response.status_code == 200, url
    policy = directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    nonces = {value for value in policy["script-src"] if value.startswith("'nonce-")}
    # Every inline script carries the response's nonce; the rest come from this site.
    html = response.content.decode()
    for attributes in re.findall(r"<script([^>]*)>", html):
        if "src=" in attributes:
            assert re.search(r'src="/', attributes), attributes
        else:
            (nonce,) = re.findall(r'nonce="([^"]+)"', attributes)
            assert f"'nonce-{nonce}'" in nonces


def test_the_json_api_and_the_probes_send_none(api) -> None:
    assert "Content-Security-Policy" not in api.get("/v1/users")
    assert "Content-Security-Policy" not in Client().get("/health")
