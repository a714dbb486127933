"""The address a request came from: ``REMOTE_ADDR``, or what trusted proxies say.

``X-Forwarded-For`` is a header like any other: a client can send any addresses in it.
Only a proxy listed in ``TRUSTED_PROXIES`` (addresses or networks) is believed, and only
about the hop before it: walking the header from the right, each address a trusted
proxy appended is followed until one is not a trusted proxy; that one is the client.
With no trusted proxies (the default), the header is ignored.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request: Any) -> str:
    """The client's address (a string, as ``REMOTE_ADDR`` is), for rate limits and lockouts."""
    remote = request.META.get("REMOTE_ADDR", "")
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(remote, networks):
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    address = remote
    while hops and _trusted(address, networks):
        hop = hops.pop()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # no proxy writes this: what remains is the client's own text
        address = hop
    return address
