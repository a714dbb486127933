"""Prometheus metrics: the ``/metrics`` endpoint, HTTP request metrics, Celery task metrics,
and the values read at scrape time that no app owns (PostgreSQL connections, queue depth).

Counters and histograms live in ``prometheus_client``'s multiprocess files when
``PROMETHEUS_MULTIPROC_DIR`` is set (scripts/up.sh sets it for gunicorn and Celery), so a
scrape of any gunicorn worker adds up every web and worker process. Values that are read
from the database or the broker are computed by collectors at scrape time: nothing polls.
Apps contribute their own scrape-time collectors as ``metrics_collectors`` on their
``AppConfig`` (set in ``ready()``), so this module names no app.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from rest_framework import exceptions, permissions
from rest_framework.authentication import BaseAuthentication
from rest_framework.settings import api_settings
from rest_framework.views import APIView

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by URL pattern, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the first middleware to the response, by URL pattern and method.",
    ["route", "method"],
)
CELERY_TASKS = Counter(
    "celery_tasks", "Celery tasks run, by task name and outcome (its final state).",
    ["task", "outcome"],
)  # fmt: skip
CELERY_TASK_DURATION = Histogram(
    "celery_task_duration_seconds", "Run time of Celery tasks, by task name.", ["task"]
)

# Methods outside this set share one label: a client cannot invent label values.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def enabled() -> bool:
    return bool(getattr(settings, "METRICS_ENABLED", True))


# --- HTTP ---------------------------------------------------------------------------


class RequestMetricsMiddleware:
    """Counts and times every request by its URL pattern (never the raw path, which holds
    ids). First in ``MIDDLEWARE``, so the time covers the whole stack."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        route = (match.route or match.view_name) if match is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_DURATION.labels(route, method).observe(elapsed)
        return response


# --- Celery (connected in config/celery.py) -----------------------------------------------

_task_started: dict[str, float] = {}


def task_started(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id is not None and enabled():
        _task_started[task_id] = time.perf_counter()


def task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: Any
) -> None:
    started = _task_started.pop(task_id, None) if task_id is not None else None
    if started is None or task is None:
        return
    name = getattr(task, "name", None) or "unknown"
    CELERY_TASKS.labels(name, (state or "unknown").lower()).inc()
    CELERY_TASK_DURATION.labels(name).observe(time.perf_counter() - started)


def process_exited(pid: int | None = None) -> None:
    """Tell the multiprocess files that a process is gone (its live gauges go with it)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())


# --- read at scrape time ------------------------------------------------------------------


class DatabaseConnectionsCollector(Collector):
    """PostgreSQL sessions on this database, by state (active, idle, idle in transaction)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "postgres_connections",
            "Client sessions on the service's database, by state (pg_stat_activity).",
            labels=["state"],
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND backend_type = 'client backend' "
                "GROUP BY 1 ORDER BY 1"
            )
            for state, count in cursor.fetchall():
                family.add_metric([state], count)
        yield family


class QueueDepthCollector(Collector):
    """Messages waiting in each Celery queue (their Redis lists, every priority)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from celery import current_app as app  # the project's app, without importing it
        from kombu.exceptions import ChannelError

        family = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in the broker, by Celery queue.",
            labels=["queue"],
        )  # fmt: skip
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in settings.CELERY_TASK_QUEUES:
                try:
                    waiting = channel.queue_declare(queue=queue.name, passive=True).message_count
                except ChannelError:  # no list yet: nothing was ever queued, or all taken
                    waiting = 0
                family.add_metric([queue.name], waiting)
        yield family


_OWN_COLLECTORS: tuple[Collector, ...] = (DatabaseConnectionsCollector(), QueueDepthCollector())


class _Guarded(Collector):
    """One collector whose failure (database or broker down) costs its metrics only, with
    a counter of such failures, instead of the whole scrape."""

    def __init__(self, collectors: list[Collector]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Any]:
        failed = GaugeMetricFamily(
            "metrics_collector_failed",
            "1 when a scrape-time collector failed in this scrape (see the log).",
            labels=["collector"],
        )
        for collector in self.collectors:
            name = type(collector).__name__
            try:
                families = list(collector.collect())
            except Exception:
                logger.warning("metrics collector %s failed", name, exc_info=True)
                failed.add_metric([name], 1)
                continue
            failed.add_metric([name], 0)
            yield from families
        yield failed


def scrape_collectors() -> list[Collector]:
    """This module's and every app's scrape-time collectors (``metrics_collectors``)."""
    found = list(_OWN_COLLECTORS)
    for app_config in apps.get_app_configs():
        found += getattr(app_config, "metrics_collectors", ())
    return found


def exposition() -> bytes:
    """The metrics in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:  # one process (manage.py runserver, tests): the live metrics are its own
        registry.register(_Delegate(REGISTRY))
    registry.register(_Guarded(scrape_collectors()))
    return generate_latest(registry)


class _Delegate(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        return self.registry.collect()


# --- the endpoint -------------------------------------------------------------------------


class MetricsTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <METRICS_TOKEN>``, compared in constant time. Another bearer
    token is left to the API's own token authentication."""

    def authenticate(self, request: Any) -> tuple[AnonymousUser, str] | None:
        expected = getattr(settings, "METRICS_TOKEN", "")
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if not expected or scheme.lower() != "bearer":
            return None
        if hmac.compare_digest(given.strip().encode(), expected.encode()):
            return AnonymousUser(), "metrics-token"
        return None

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="metrics"'


class CanReadMetrics(permissions.BasePermission):
    message = "Reading the metrics takes the permission to view them."

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.auth == "metrics-token":
            return True
        user = request.user
        return bool(user and user.is_staff and user.has_perm(settings.METRICS_PERMISSION))


@extend_schema(exclude=True)  # Prometheus's text format for scrapers, not the REST API
class MetricsView(APIView):
    """``GET /metrics``: for Prometheus, with ``METRICS_TOKEN``, or for staff with the
    permission ``METRICS_PERMISSION`` (a session or an API token)."""

    authentication_classes = [
        MetricsTokenAuthentication,
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES,
    ]
    permission_classes = [CanReadMetrics]
    throttle_classes: list[type] = []  # a scraper comes every few seconds, by design

    def get(self, request: Any) -> HttpResponse:
        if not enabled():
            raise exceptions.NotFound("Metrics are turned off (METRICS_ENABLED).")
        return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
