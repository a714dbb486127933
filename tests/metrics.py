"""Reading /metrics in tests: the exposition parsed into {(name, labels): value}."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not (yet) exported, as Prometheus would treat a
    counter that never moved."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: Any, token: str) -> Samples:
    """GET /metrics through Django's test client (or requests, with ``url``), with the
    bearer token."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content[:500]
    return parse(response.content.decode())


def scrape_url(url: str, token: str) -> Samples:
    """GET ``url``/metrics over HTTP with the bearer token."""
    import requests

    headers = {"Authorization": f"Bearer {token}"}
    response = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text[:500]
    return parse(response.text)


def served_with_metrics(tmp_path: Any, token: str, workers: int = 2) -> tuple[Any, dict[str, str]]:
    """gunicorn as scripts/up.sh runs it for metrics (a multiprocess directory, the child_exit
    hook of config/gunicorn.py), on the test database; returns it and its environment, for
    other processes (Celery) that should count into the same directory."""
    from tests.faults import Gunicorn
    from tests.processes import ROOT, child_env

    directory = tmp_path / "metrics"
    directory.mkdir()
    env = child_env(PROMETHEUS_MULTIPROC_DIR=str(directory), METRICS_TOKEN=token)
    server = Gunicorn(
        env, tmp_path / "gunicorn.log", workers=workers,
        extra=("--config", str(ROOT / "config" / "gunicorn.py")),
    )  # fmt: skip
    return server, env
