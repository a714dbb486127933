"""The person keys in a database of their own (PERSONAL_KEYS_DATABASE_URL).

Run as the service runs: manage.py processes with both URLs set, on two fresh databases
of the test server, so the keys table and its statements really are elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from tests.personal import held, pg_dump
from tests.processes import ROOT, child_env, raw_connection
from tests.processes import test_database_url as database_url

pytestmark = pytest.mark.django_db(transaction=True)

CREATE = """
from users import handlers
from users.commands import CreateUser, UpdateUser
result = handlers.handle(CreateUser(
    email="separate.keys.k3y@example.com", first_name="Kestrel", last_name="Apart"))
handlers.handle(UpdateUser(user_id=result.user.id, first_name="Kestrella"))
print(result.user.id)
"""


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases (events, keys) on the test server, dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    names = (
        f"{connection.settings_dict['NAME']}_main_{tag}",
        f"{connection.settings_dict['NAME']}_keys_{tag}",
    )
    with raw_connection() as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with raw_connection() as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(name: str) -> str:
    test_name = connection.settings_dict["NAME"]
    return database_url().replace(f"/{test_name}", f"/{name}", 1)


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


@pytest.mark.slow
def test_keys_live_only_in_their_own_database_and_erasure_reaches_them(databases) -> None:
    main, keys = databases
    env = child_env(DATABASE_URL=_url(main), PERSONAL_KEYS_DATABASE_URL=_url(keys))
    _manage(env, "migrate", "--noinput")
    _manage(env, "migrate", "--noinput", "--database", "personal_keys")
    assert "personal_keys" not in _tables(_url(main))
    assert "events" in _tables(_url(main))
    assert _tables(_url(keys)) == {"personal_keys", "django_migrations"}

    user_id = _manage(env, "shell", "--no-imports", "-c", CREATE).split()[-1]
    with psycopg.connect(_url(keys)) as conn:
        (wrapped,) = conn.execute(
            "SELECT wrapped_key FROM personal_keys WHERE subject = %s", [user_id]
        ).fetchone()
    assert wrapped is not None
    # A copy of the event store alone: ciphertext and hashes, no key, no personal value.
    values = ["separate.keys.k3y@example.com", "Kestrel", "Kestrella", "Apart"]
    assert held(pg_dump(main), values) == []

    exported = json.loads(_manage(env, "export_user", user_id))
    assert exported["profile"]["first_name"] == "Kestrella"
    assert exported["events"][0]["data"]["email"] == "separate.keys.k3y@example.com"

    out = _manage(env, "erase_user", user_id, "--noinput", "--wait", "0")
    assert f"user {user_id} erased" in out
    with psycopg.connect(_url(keys)) as conn:
        row = conn.execute(
            "SELECT wrapped_key, erased_at FROM personal_keys WHERE subject = %s", [user_id]
        ).fetchone()
    assert row[0] is None
    assert row[1] is not None
    assert held(pg_dump(keys), values) == []
    exported = json.loads(_manage(env, "export_user", user_id))
    assert exported["erased"] is True
    assert exported["events"][0]["data"]["email"] == "[erased]"
