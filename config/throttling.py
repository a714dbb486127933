"""Rate limits: fixed-window counters in Redis, reserved in leases; fail open without Redis.

DRF's own throttles keep a list of timestamps per client in the cache and read, unpickle,
trim and write back the whole list on every request: two round trips and O(requests in
the window), and two processes can both admit past the limit. Here a client's
window is one Redis counter that expires with the window (``duration``). The price of a
fixed window: a client may send up to twice its rate across the end of one window and
the start of the next.

A round trip per request is still a large share of a cached ``GET /v1/users/{id}``
(docs/framework-bends.md), so a process reserves several requests at once (a lease) and
admits them from memory until they are used or the window ends. A lease never admits
more than the counter allowed, so the limit holds across any number of processes; what
it costs is that requests reserved by one process and unused when the window runs out
are lost to the others. Leases shrink as the window fills (:func:`lease_size`), so that
loss is small, and limits under 128 per window reserve one request at a time, exactly as
a plain counter would.

Were a cache error to propagate, every request would answer 500 while Redis is down,
although commands need only PostgreSQL (invariant 6: a command succeeds once its events
commit). Losing rate limiting for the length of an outage is the lesser harm; each
skipped check is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from redis.commands.core import Script
from redis.exceptions import RedisError
from rest_framework import authentication, exceptions, throttling

from config.bounded import make_room
from config.cache import redis_client
from config.clientip import client_ip

logger = logging.getLogger(__name__)

LEASE_MAX = 32
"""The most requests one process reserves at once for one client."""

# One atomic step, so that the count and the time left belong to the same window: as two
# commands, the key could expire between them and a lease reserved in the old window
# would be given the new window's end. Returns {count after the reservation, ms left}.
_RESERVE = Script(
    None,
    b"""
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    left = tonumber(ARGV[2])
    redis.call('PEXPIRE', KEYS[1], left)
end
return {count, left}
""",
)


def lease_size(limit: int, counted: int) -> int:
    """How many requests to reserve at once, given the window's count last seen.

    A 64th of what is left, at most ``LEASE_MAX``, at least one: large leases while the
    window is far from its limit, single requests near it, so that leases still unused
    elsewhere when a window runs out are small.
    """
    return max(1, min(LEASE_MAX, (limit - counted) // 64))


class _Lease:
    """What this process holds of one client's current window."""

    __slots__ = ("counted", "ends", "left", "rate")

    def __init__(self, left: int, counted: int, ends: float, rate: tuple[int, int]) -> None:
        self.left = left  # requests reserved and not yet admitted
        self.counted = counted  # the window's counter after this process's last reservation
        self.ends = ends  # time.monotonic() by which the window has expired in Redis
        self.rate = rate  # (requests, seconds) it was reserved under


_leases: dict[str, _Lease] = {}
_leases_lock = threading.Lock()
_MAX_CLIENTS = 10_000


def forget_leases() -> None:
    """Drop every lease of this process: its next requests ask Redis again."""
    with _leases_lock:
        _leases.clear()


# A child process starts with nothing reserved (the requests belong to the parent).
os.register_at_fork(after_in_child=forget_leases)


def _admit_from_lease(key: str, rate: tuple[int, int]) -> int | None:
    """Admit one request from this process's lease (None), or say how many to reserve."""
    with _leases_lock:
        lease = _leases.get(key)
        if lease is None or lease.rate != rate or time.monotonic() >= lease.ends:
            return lease_size(rate[0], 0)
        if lease.left > 0:
            lease.left -= 1
            return None
        return lease_size(rate[0], lease.counted)


def _keep(key: str, lease: _Lease) -> None:
    """Store a new reservation, adding it to what another thread reserved meanwhile."""
    with _leases_lock:
        now = time.monotonic()
        held = _leases.pop(key, None)
        # A lease still current here was current when Redis counted this one (its end is
        # never later than the window's): the same window, so nothing reserved is lost.
        if held is not None and held.rate == lease.rate and held.ends > now:
            lease.left += held.left
            lease.counted = max(lease.counted, held.counted)
            lease.ends = min(lease.ends, held.ends)
        # The least recently reserved go first.
        make_room(_leases, _MAX_CLIENTS, lambda held: held.ends <= now)
        _leases[key] = lease


class FixedWindowMixin:
    """DRF's throttle interface (rates, scopes, idents) over one Redis counter per window."""

    # Not DRF's key: a key holding DRF's pickled history would make INCRBY fail.
    cache_format = "throttle_window_%(scope)s_%(ident)s"

    def get_ident(self, request: Any) -> str:
        # Not DRF's: it believes X-Forwarded-For from anyone unless NUM_PROXIES is set.
        return client_ip(request)

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:  # type: ignore[attr-defined]
            return True
        ident = self.get_cache_key(request, view)  # type: ignore[attr-defined]
        if ident is None:
            return True
        cache = self.cache  # type: ignore[attr-defined]
        key = cache.make_key(ident)  # the Redis key: prefix, version and ident
        limit: int = self.num_requests  # type: ignore[attr-defined]
        seconds: int = self.duration  # type: ignore[attr-defined]
        size = _admit_from_lease(key, (limit, seconds))
        if size is None:
            return True
        cache.validate_key(key)
        asked = time.monotonic()  # before Redis reads its clock: the lease ends no later
        count, left_ms = _RESERVE(
            keys=[key], args=[size, seconds * 1000], client=redis_client(cache)
        )
        granted = min(size, limit - (count - size))
        if lease_size(limit, 0) > 1:  # nothing to keep when every lease is one request
            ends = asked + left_ms / 1000
            _keep(key, _Lease(max(0, granted - 1), count, ends, (limit, seconds)))
        if granted > 0:
            return True
        self.seconds_left = max(left_ms, 1) / 1000
        return False

    def wait(self) -> float:
        """Seconds until the window ends (the Retry-After of a 429)."""
        return self.seconds_left


class FailOpenMixin:
    """Let the request through (and log it) when the cache cannot be reached."""

    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("rate limit not checked, the cache is unreachable: %s", exc)
            return True


# The count of a window and the milliseconds it has left, counting nothing.
_PEEK = Script(
    None,
    b"return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}",
)


class AnonRateThrottle(FailOpenMixin, FixedWindowMixin, throttling.AnonRateThrottle):
    """Per client address, for requests no credential vouches for.

    Authentication runs it, before any permission check and before a token is looked up
    (:class:`AnonymousRateLimit`, ``users.authentication``), so it never reads
    ``request.user``: it is not in ``DEFAULT_THROTTLE_CLASSES``.
    """

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def exhausted(self, request: Any) -> bool:
        """Whether the address has used up its window, counting nothing (and False when
        the cache is unreachable). Sets :meth:`wait` when it has."""
        if self.rate is None:
            return False
        key = self.cache.make_key(self.get_cache_key(request, None))
        with _leases_lock:
            lease = _leases.get(key)
            if lease is not None and lease.left > 0 and time.monotonic() < lease.ends:
                return False
        try:
            count, left_ms = _PEEK(keys=[key], client=redis_client(self.cache))
        except (RedisError, OSError) as exc:
            logger.warning("rate limit not checked, the cache is unreachable: %s", exc)
            return False
        if count < self.num_requests:
            return False
        self.seconds_left = max(left_ms, 1) / 1000
        return True


class AnonymousRateLimit(authentication.BaseAuthentication):
    """The last of ``DEFAULT_AUTHENTICATION_CLASSES``: reached by requests that no
    credential authenticated, it counts them against their address's anonymous rate
    (429 once it is used up), before permissions answer 401 or 403. Authenticates no one.
    """

    def authenticate(self, request: Any) -> None:
        throttle = AnonRateThrottle()
        if not throttle.allow_request(request, None):
            raise exceptions.Throttled(throttle.wait())
        return None


class UserRateThrottle(FailOpenMixin, FixedWindowMixin, throttling.UserRateThrottle):
    """Per authenticated user."""
