"""Without an OTLP endpoint, no process loads the tracing SDK, an exporter or an
instrumentation: tracing off costs nothing. (redis-py imports OpenTelemetry's API and
metrics SDK by itself when they are installed.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

PROBE = """
import sys
import config.wsgi
import config.celery
from eventstore import tracing
assert tracing.carrier() == {}
print(sorted(
    m for m in sys.modules
    if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.instrumentation",
                     "opentelemetry.exporter"))
))
"""


@pytest.mark.slow
def test_no_opentelemetry_module_is_loaded_when_tracing_is_off() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TEST_TRACING"))}
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
