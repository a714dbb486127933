#!/usr/bin/env bash
# Long API fuzzing: Schemathesis against the running service's own OpenAPI schema, every
# operation, every phase (examples, coverage, fuzzing, stateful: create -> get / update /
# delete through the links it infers from Location headers), with the checks of
# tests/e2e/test_fuzz.py (no 5xx, status codes, content types, headers and bodies as
# documented, invalid input refused, deleted users gone, ...).
#
# Start the service first, with rate limits out of the way and read-your-writes waits
# short (a generated wait_for position nobody wrote waits out the timeout):
#
#   THROTTLE_USER_RATE=100000000/minute THROTTLE_ANON_RATE=100000000/minute \
#   READ_YOUR_WRITES_TIMEOUT_SECONDS=0.05 scripts/up.sh
#   scripts/fuzz.sh                       # about 5 minutes: --max-time 300
#   scripts/fuzz.sh --max-time 1800 -w 2  # other `schemathesis run` options pass through
#
# It creates two API tokens with manage.py (the same configuration as scripts/up.sh): one
# for a plain client (fuzz-client, created if missing) and one for the staff superuser
# (DJANGO_SUPERUSER_USERNAME, admin) for /v1/events and /v1/streams. FUZZ_URL overrides
# the URL scripts/up.sh serves. Reports (JUnit, NDJSON) go to .data/fuzz/.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

[[ -x $VENV/bin/schemathesis ]] || die "schemathesis is missing: uv sync --frozen --all-groups --inexact"
load_config DATABASE_URL REDIS_URL DJANGO_SUPERUSER_USERNAME
URL=${FUZZ_URL:-$(cat "$WEB_URL_FILE" 2>/dev/null || printf 'http://127.0.0.1:8000')}
[[ $(http_status "$URL/health") == 200 ]] || die "no service answers at $URL/health: run scripts/up.sh first"

info "Creating API tokens (fuzz-client, and ${DJANGO_SUPERUSER_USERNAME:-admin} for the staff routes)"
client_token=$("$PY" manage.py create_api_token fuzz-client --create-user --name fuzz | tail -n 1)
staff_token=$("$PY" manage.py create_api_token "${DJANGO_SUPERUSER_USERNAME:-admin}" --name fuzz | tail -n 1)

out="$DATA/fuzz"
mkdir -p "$out"
config="$out/schemathesis.toml"
umask 077 # the config holds the tokens
cat >"$config" <<TOML
headers = { Authorization = "Bearer $client_token" }

[generation]
max-examples = 200
# Credentials are the tokens above, never generated ones.
with-security-parameters = false

[[operations]]
include-path-regex = "^/v1/(events|streams/)"
headers = { Authorization = "Bearer $staff_token" }
TOML

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance,negative_data_rejection
checks+=,missing_required_header,unsupported_method,use_after_free,ensure_resource_availability

info "Fuzzing $URL (schema $URL/api/schema/)"
exec "$VENV/bin/schemathesis" --config-file "$config" run "$URL/api/schema/" \
    --checks "$checks" --phases examples,coverage,fuzzing,stateful --max-time 300 \
    --report junit,ndjson --report-dir "$out" "$@"
