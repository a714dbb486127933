"""Rate limits that fail open: with Redis unreachable, requests go on unthrottled.

DRF's throttles keep their counters in Django's cache (Redis). Were a cache error to
propagate, every request would answer 500 while Redis is down, although commands need
only PostgreSQL (invariant 6: a command succeeds once its events commit). Losing rate
limiting for the length of an outage is the lesser harm; each skipped check is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from rest_framework import throttling

logger = logging.getLogger(__name__)


class FailOpenMixin:
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("rate limit not checked, the cache is unreachable: %s", exc)
            return True


class AnonRateThrottle(FailOpenMixin, throttling.AnonRateThrottle):
    """Per client IP, for requests without credentials."""


class UserRateThrottle(FailOpenMixin, throttling.UserRateThrottle):
    """Per authenticated user."""
