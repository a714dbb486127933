"""Prometheus metrics of the sagas: step durations, emails sent and failed, and (read at
scrape time) instances by saga type and status. No label holds an id or an address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sagas import registry
from sagas.models import SagaInstance

STEP_DURATION = Histogram(
    "saga_step_duration_seconds",
    "Time of one saga step with the write of its outcome, by saga, step and outcome "
    "('done', 'failed': it raised, 'changed': the instance changed meanwhile).",
    ["saga", "step", "outcome"],
)
EMAILS_SENT = Counter("saga_emails_sent", "Emails the relay (or mail backend) accepted.")
EMAILS_FAILED = Counter(
    "saga_emails_failed",
    "Emails that could not be sent, by reason: 'unreachable' (the relay could not be "
    "reached; retried), 'refused' (a permanent refusal), 'error' (anything else; retried).",
    ["reason"],
)


def enabled() -> bool:
    return bool(getattr(settings, "METRICS_ENABLED", True))


def step_timed(saga: str, step: str, outcome: str, seconds: float) -> None:
    if enabled():
        STEP_DURATION.labels(saga, step, outcome).observe(seconds)


def email_sent() -> None:
    if enabled():
        EMAILS_SENT.inc()


def email_failed(reason: str) -> None:
    if enabled():
        EMAILS_FAILED.labels(reason).inc()


class SagaInstancesCollector(Collector):
    """How many instances of each saga type are in each status, read when scraped."""

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "saga_instances", "Saga instances by saga type and status.", labels=["saga", "status"]
        )
        counts = {
            (row["saga_type"], row["status"]): row["n"]
            for row in SagaInstance.objects.values("saga_type", "status")
            .order_by()
            .annotate(n=Count("id"))
        }
        # Every status of every registered saga, zeros included, so alerts see a series.
        for saga in registry.names():
            for status in SagaInstance.Status.values:
                counts.setdefault((saga, status), 0)
        for (saga, status), count in sorted(counts.items()):
            family.add_metric([saga, status], count)
        yield family
