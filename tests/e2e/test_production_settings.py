"""Production settings: the deploy checklist passes, and unsafe configurations refuse to start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT, child_env

STRONG_KEY = "x7Qm2vR9pL4tZ8wK1nB6cF3hJ5gD0sA-yE+uI*oP!qW@rT#zX$vN%bM^kL&jH(gF)"
PERSONAL_DATA = {
    "PERSONAL_DATA_MASTER_KEYS": "cHJvZHVjdGlvbi1tYXN0ZXIta2V5LW9mLXRoZS10ZXN0",
    "PERSONAL_DATA_HMAC_KEY": "production-hmac-key-of-the-test",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(DJANGO_SETTINGS_MODULE="config.settings", **{**PERSONAL_DATA, **env}),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_check_deploy_has_no_warnings() -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_ENV="production", SECRET_KEY=STRONG_KEY, ALLOWED_HOSTS="users.example.com",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
def test_production_refuses_a_missing_or_default_secret_key() -> None:
    for key in ("", "django-insecure-development-only-key-never-use-in-production"):
        result = manage("check", DJANGO_ENV="production", SECRET_KEY=key, ALLOWED_HOSTS="x")
        assert result.returncode != 0
        assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.slow
def test_production_defaults_are_safe() -> None:
    script = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.ALLOWED_HOSTS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS > 0)"
    )
    result = manage(
        "shell", "--no-imports", "-c", script, DJANGO_ENV="production", SECRET_KEY=STRONG_KEY
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "[]", "True", "True", "True", "True"]


@pytest.mark.slow
def test_production_refuses_to_start_without_the_keys_of_personal_data() -> None:
    for missing in PERSONAL_DATA:
        result = manage(
            "check", DJANGO_ENV="production", SECRET_KEY=STRONG_KEY, ALLOWED_HOSTS="x",
            **{missing: ""},
        )  # fmt: skip
        assert result.returncode != 0
        assert "PERSONAL_DATA_MASTER_KEYS and PERSONAL_DATA_HMAC_KEY must be set" in result.stderr
