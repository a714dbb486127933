#!/usr/bin/env bash
# Lint and test: uv sync (dev group), ruff check, ruff format --check, then pytest with
# real PostgreSQL and Redis. Arguments go to pytest (run from the project root), e.g.
#   scripts/test.sh tests/unit -x
#
# Servers, first match wins:
#   1. DATABASE_URL / REDIS_URL from the environment or .env;
#   2. the machine's PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis
#      on 127.0.0.1:6379, database 15, which is the tests' own and emptied before each
#      run (two runs at once on one machine disturb each other, in Redis and in the
#      test_postgres database: give each its own DATABASE_URL and REDIS_URL);
#   3. embedded servers under .data/: the PostgreSQL of scripts/up.sh if it runs (tests
#      use their own test_* database), else one started for this run; always a Redis of
#      its own (.data/redis/redis-test.sock), so a running worker cannot take the tests'
#      tasks. What this run started, it stops.
# pytest's exit code is the script's; "no tests collected" (5) is a failure too.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

sync_venv

# The browser tests drive Debian's Chromium (Playwright's own download cannot work here);
# without it they skip, so a failed install is a warning, not a failure.
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    info "installing Debian's chromium for the browser tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || warn "could not install chromium: the browser tests will skip"
fi
# Likewise Debian's Prometheus, which scrapes the service in tests/e2e/test_prometheus.py.
if ! command -v prometheus >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    info "installing Debian's prometheus for the metrics test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } \
        >/dev/null 2>&1 || warn "could not install prometheus: the Prometheus test will skip"
fi

info "ruff check ."
lint_failed=false
"$VENV/bin/ruff" check . || lint_failed=true
info "ruff format --check ."
"$VENV/bin/ruff" format --check . || lint_failed=true
info "every setting documented in .env.example"
# config/settings.py reads its settings through django-environ's `env`; .env.example must
# name each one (the design asks for one file that documents them all).
"$PY" - <<'PY' || lint_failed=true
import re, sys
from pathlib import Path
read = set()
for path in Path("config").glob("*.py"):
    text = path.read_text()
    read |= set(re.findall(r'\benv(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"', text))
    read |= set(re.findall(r'"([A-Z][A-Z0-9_]*)"\s+(?:not\s+)?in\s+env\b', text))
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", Path(".env.example").read_text(), re.M))
missing = sorted(read - documented)
if missing:
    print(f"not documented in .env.example: {', '.join(missing)}", file=sys.stderr)
    sys.exit(1)
print(f"{len(read)} settings, all documented")
PY
if $lint_failed; then
    die "lint failed (see above; ruff fixes most itself: .venv/bin/ruff check --fix . && .venv/bin/ruff format .)"
fi

load_config DATABASE_URL REDIS_URL
MACHINE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS_URL="redis://127.0.0.1:6379/15"

# Embedded servers this run started (and so stops on exit).
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [[ ${STARTED[*]:-} == *"embedded Redis (redis-test)"* ]]; then
        stop_embedded_redis redis-test
    fi
    if [[ ${STARTED[*]:-} == *"embedded PostgreSQL"* ]]; then
        stop_embedded_postgres
    fi
    exit "$rc"
}
trap cleanup EXIT

if [[ -n ${DATABASE_URL:-} ]]; then
    db_source="DATABASE_URL from the environment/.env"
elif postgres_reachable "$MACHINE_DATABASE_URL"; then
    DATABASE_URL=$MACHINE_DATABASE_URL
    db_source="the machine's PostgreSQL"
else
    say "No PostgreSQL on 127.0.0.1:5432 (as user postgres): using the embedded one"
    start_embedded_postgres
    DATABASE_URL=$EMBEDDED_DATABASE_URL
    db_source="the embedded PostgreSQL"
fi

if [[ -n ${REDIS_URL:-} ]]; then
    redis_source="REDIS_URL from the environment/.env"
elif redis_reachable "$MACHINE_REDIS_URL"; then
    REDIS_URL=$MACHINE_REDIS_URL
    redis_source="the machine's Redis, database 15, emptied first"
    # Database 15 is the tests' own. A previous run can leave queued or unacked tasks and
    # wake-up keys (30 s TTL) there, which would swallow this run's first wake-ups.
    redis_flush "$MACHINE_REDIS_URL" || die "cannot empty $MACHINE_REDIS_URL"
else
    say "No Redis on 127.0.0.1:6379: starting an embedded one for this run"
    start_embedded_redis redis-test
    REDIS_URL=$EMBEDDED_REDIS_URL
    redis_source="an embedded Redis for this run"
fi
export DATABASE_URL REDIS_URL

say "Database: $db_source ($DATABASE_URL)"
say "Broker:   $redis_source ($REDIS_URL)"
info "manage.py makemigrations --check --dry-run"
# A model change without its migration would make every scripts/up.sh warn, and the
# database would not match the code: fail here, before the suite runs.
"$PY" manage.py makemigrations --check --dry-run \
    || die "models and migrations disagree: run .venv/bin/python manage.py makemigrations"
info "pytest $*"
set +e
"$VENV/bin/pytest" "$@"
rc=$?
set -e
case $rc in
    0) say "Tests passed." ;;
    5) warn "pytest collected no tests (exit code 5): that counts as a failure" ;;
    *) warn "pytest failed (exit code $rc)" ;;
esac
exit "$rc"
