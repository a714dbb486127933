"""Models and migrations agree: a model change without its migration fails the suite."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

# The service's own apps; tests.testapp is the tests' and has no migrations to keep.
SERVICE_APPS = ("eventstore", "users", "sagas")


def test_every_model_change_has_its_migration(db) -> None:
    out = StringIO()
    try:
        call_command("makemigrations", *SERVICE_APPS, check=True, dry_run=True, stdout=out)
    except SystemExit:
        pytest.fail(
            f"models and migrations disagree; run manage.py makemigrations:\n{out.getvalue()}"
        )
