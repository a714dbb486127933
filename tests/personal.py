"""Helpers for the personal-data tests: a plain-SQL dump of a whole database."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from django.db import connection

_BUNDLED = Path(__file__).resolve().parent.parent / ".venv/lib"


def _major(pg_dump: str) -> int:
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=True)
    return int(re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout).group(1))


def pg_dump_binary() -> str:
    """A pg_dump that can dump the test server: its major version at least the server's."""
    connection.ensure_connection()
    server = connection.pg_version // 10000
    candidates = [shutil.which("pg_dump")]
    candidates += sorted(
        str(p) for p in _BUNDLED.glob("python*/site-packages/*/pginstall*/bin/pg_dump")
    )
    for candidate in filter(None, candidates):
        if _major(candidate) >= server:
            return candidate
    raise RuntimeError(f"no pg_dump for PostgreSQL {server} (tried {candidates})")


def pg_dump(dbname: str | None = None) -> str:
    """``pg_dump`` of a whole database as plain SQL (the test database by default)."""
    s = connection.settings_dict
    env = dict(os.environ)
    if s.get("PASSWORD"):
        env["PGPASSWORD"] = s["PASSWORD"]
    done = subprocess.run(
        [
            pg_dump_binary(),
            "--no-owner",
            "--no-privileges",
            "--host",
            s.get("HOST") or "127.0.0.1",
            "--port",
            str(s.get("PORT") or 5432),
            "--username",
            s.get("USER") or "postgres",
            "--dbname",
            dbname or s["NAME"],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def held(dump: str, values: list[str]) -> list[str]:
    """Which of ``values`` the dump holds, in any letter case."""
    lowered = dump.lower()
    return [value for value in values if value.lower() in lowered]
