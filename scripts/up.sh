#!/usr/bin/env bash
# Start the service locally: PostgreSQL and Redis (embedded under .data/ unless
# DATABASE_URL / REDIS_URL are set in the environment or .env), migrations, static files,
# a staff superuser, gunicorn, two Celery workers (subscribers and saga steps; the mail
# queue on a thread pool) and Celery beat. Safe to run again: what already runs is left
# alone. Stop everything with scripts/down.sh.
#
# Settings: HOST (127.0.0.1), PORT (8000), WEB_CONCURRENCY (2), WEB_THREADS (4), MAIL_QUEUE (mail),
# MAIL_WORKER_CONCURRENCY (20), PROMETHEUS_MULTIPROC_DIR (.data/metrics),
# DJANGO_SUPERUSER_USERNAME / _EMAIL / _PASSWORD (admin / admin@example.com / admin);
# see .env.example.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

HEALTH_TIMEOUT=60

sync_venv
load_config DATABASE_URL REDIS_URL HOST PORT WEB_CONCURRENCY WEB_THREADS MAIL_QUEUE \
    MAIL_WORKER_CONCURRENCY DJANGO_SUPERUSER_USERNAME DJANGO_SUPERUSER_EMAIL \
    DJANGO_SUPERUSER_PASSWORD DJANGO_ENV PERSONAL_DATA_MASTER_KEYS PERSONAL_DATA_HMAC_KEY \
    PERSONAL_KEYS_DATABASE_URL PROMETHEUS_MULTIPROC_DIR

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
WEB_CONCURRENCY=${WEB_CONCURRENCY:-2}
WEB_THREADS=${WEB_THREADS:-4}
MAIL_QUEUE=${MAIL_QUEUE:-mail}
MAIL_WORKER_CONCURRENCY=${MAIL_WORKER_CONCURRENCY:-20}
export DJANGO_SUPERUSER_USERNAME=${DJANGO_SUPERUSER_USERNAME:-admin}
export DJANGO_SUPERUSER_EMAIL=${DJANGO_SUPERUSER_EMAIL:-admin@example.com}
export DJANGO_SUPERUSER_PASSWORD=${DJANGO_SUPERUSER_PASSWORD:-admin}
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
[[ $WEB_CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "WEB_CONCURRENCY must be a positive number, got '$WEB_CONCURRENCY'"
[[ $WEB_THREADS =~ ^[1-9][0-9]*$ ]] || die "WEB_THREADS must be a positive number, got '$WEB_THREADS'"
[[ $MAIL_WORKER_CONCURRENCY =~ ^[1-9][0-9]*$ ]] ||
    die "MAIL_WORKER_CONCURRENCY must be a positive number, got '$MAIL_WORKER_CONCURRENCY'"

WANT_EMBEDDED_PG=false
WANT_EMBEDDED_REDIS=false
[[ -n ${DATABASE_URL:-} ]] || WANT_EMBEDDED_PG=true
[[ -n ${REDIS_URL:-} ]] || WANT_EMBEDDED_REDIS=true

# gunicorn binds [::1]:8000 for IPv6 literals; the printed URLs use a reachable address.
case $HOST in
    *:*) BIND="[$HOST]:$PORT" ;;
    *) BIND="$HOST:$PORT" ;;
esac
case $HOST in
    0.0.0.0) URL_HOST=127.0.0.1 ;;
    ::) URL_HOST="[::1]" ;;
    *:*) URL_HOST="[$HOST]" ;;
    *) URL_HOST=$HOST ;;
esac
BASE_URL="http://$URL_HOST:$PORT"

print_urls() {
    local base=$1
    say ""
    say "  API docs (Swagger UI)  $base/api/"
    say "  Admin                  $base/admin/"
    say "  Health                 $base/health"
    say "  Ready                  $base/ready"
    say "  Admin login            $DJANGO_SUPERUSER_USERNAME / $2"
    say "  Logs                   .data/log/$($WANT_EMBEDDED_PG && printf "   (PostgreSQL: .data/pg/log)")"
    say "  Stop                   scripts/down.sh"
}

# --- already running? ----------------------------------------------------------------
all_running=true
$WANT_EMBEDDED_PG && ! embedded_postgres_pid >/dev/null && all_running=false
$WANT_EMBEDDED_REDIS && ! embedded_redis_pid redis >/dev/null && all_running=false
live_pid "$GUNICORN_PIDFILE" gunicorn >/dev/null || all_running=false
live_pid "$WORKER_PIDFILE" celery >/dev/null || all_running=false
live_pid "$MAIL_WORKER_PIDFILE" celery >/dev/null || all_running=false
live_pid "$BEAT_PIDFILE" celery >/dev/null || all_running=false
if $all_running; then
    running_url=$(cat "$WEB_URL_FILE" 2>/dev/null || printf '%s' "$BASE_URL")
    say "Already running; nothing changed (gunicorn pid $(live_pid "$GUNICORN_PIDFILE" gunicorn)," \
        "workers $(live_pid "$WORKER_PIDFILE" celery) and $(live_pid "$MAIL_WORKER_PIDFILE" celery)," \
        "beat $(live_pid "$BEAT_PIDFILE" celery))."
    if [[ $running_url != "$BASE_URL" ]]; then
        warn "it serves $running_url, not $BASE_URL: run scripts/down.sh first to change HOST/PORT"
    fi
    say "To pick up new code or migrations: scripts/down.sh && scripts/up.sh"
    print_urls "$running_url" "$DJANGO_SUPERUSER_PASSWORD (unless changed since up.sh created the user)"
    exit 0
fi

mkdir -p "$RUN_DIR" "$LOG_DIR"
trap 'if (($?)); then say "up.sh failed; scripts/down.sh stops whatever did start." >&2; fi' EXIT

# Fail before starting anything if gunicorn could not listen.
if ! live_pid "$GUNICORN_PIDFILE" gunicorn >/dev/null; then
    bind_status=0
    check_bindable "$HOST" "$PORT" || bind_status=$?
    if ((bind_status == 1)); then
        if command -v ss >/dev/null 2>&1; then
            ss -ltnp "sport = :$PORT" >&2 || true
        fi
        die "port $PORT on $HOST is already in use by another program; stop it or run with PORT=<free port>"
    elif ((bind_status != 0)); then
        die "gunicorn could not listen on $BIND: set HOST to an address of this machine"
    fi
fi

# --- PostgreSQL and Redis --------------------------------------------------------------
embedded_lines=()
if $WANT_EMBEDDED_PG; then
    start_embedded_postgres
    embedded_lines+=("DATABASE_URL=$EMBEDDED_DATABASE_URL")
else
    say "Using DATABASE_URL from the environment/.env (no embedded PostgreSQL)"
fi
if $WANT_EMBEDDED_REDIS; then
    start_embedded_redis redis
    embedded_lines+=("REDIS_URL=$EMBEDDED_REDIS_URL")
else
    say "Using REDIS_URL from the environment/.env (no embedded Redis)"
fi

# config/settings.py reads .data/embedded.env after the environment and .env, so every
# process (manage.py, gunicorn, Celery, a shell) finds the embedded servers.
if ((${#embedded_lines[@]})); then
    tmp="$EMBEDDED_ENV.tmp.$$"
    {
        say "# Written by scripts/up.sh for the embedded servers under .data/; removed by scripts/down.sh."
        printf '%s\n' "${embedded_lines[@]}"
    } >"$tmp"
    mv -f "$tmp" "$EMBEDDED_ENV"
else
    rm -f "$EMBEDDED_ENV"
fi

# --- keys of personal data --------------------------------------------------------------
# Outside production, a development master key and HMAC secret are made once and kept in
# .data/personal-data.env (config/settings.py reads it; scripts/down.sh leaves it): losing
# it makes the personal data stored with it unreadable. Production must set its own.
if [[ ${DJANGO_ENV:-development} != production && -z ${PERSONAL_DATA_MASTER_KEYS:-} &&
    ! -s $PERSONAL_DATA_ENV ]]; then
    info "Making development keys for personal data in ${PERSONAL_DATA_ENV#"$ROOT"/}"
    (
        umask 077
        "$PY" - >"$PERSONAL_DATA_ENV.tmp.$$" <<'PY'
import base64, os, secrets
print("# Written once by scripts/up.sh: development keys of personal data. Keep this file:")
print("# without it the personal data stored with these keys cannot be read.")
print(f"PERSONAL_DATA_MASTER_KEYS={base64.b64encode(os.urandom(32)).decode()}")
print(f"PERSONAL_DATA_HMAC_KEY={secrets.token_urlsafe(32)}")
PY
        mv -f "$PERSONAL_DATA_ENV.tmp.$$" "$PERSONAL_DATA_ENV"
    ) || die "could not write $PERSONAL_DATA_ENV"
fi

# --- Django: migrations, static files, superuser ---------------------------------------
info "Applying migrations"
"$PY" manage.py migrate --noinput || die "manage.py migrate failed (see above)"
if [[ -n ${PERSONAL_KEYS_DATABASE_URL:-} ]]; then
    info "Applying migrations to the personal keys database"
    "$PY" manage.py migrate --noinput --database personal_keys ||
        die "manage.py migrate --database personal_keys failed (see above)"
fi
info "Collecting static files into .data/static"
"$PY" manage.py collectstatic --noinput --verbosity 0 || die "manage.py collectstatic failed (see above)"

info "Ensuring the staff superuser '$DJANGO_SUPERUSER_USERNAME' exists"
superuser_state=$("$PY" manage.py shell --no-imports -c '
import os
from django.contrib.auth import get_user_model

User = get_user_model()
username = os.environ["DJANGO_SUPERUSER_USERNAME"]
if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
    print("exists")
else:
    User._default_manager.create_superuser(
        **{User.USERNAME_FIELD: username},
        email=os.environ["DJANGO_SUPERUSER_EMAIL"],
        password=os.environ["DJANGO_SUPERUSER_PASSWORD"],
    )
    print("created")
') || die "could not create the superuser (see above)"
superuser_state=${superuser_state##*$'\n'}
if [[ $superuser_state == created ]]; then
    say "Created superuser '$DJANGO_SUPERUSER_USERNAME' <$DJANGO_SUPERUSER_EMAIL>"
    password_note=$DJANGO_SUPERUSER_PASSWORD
else
    say "Superuser '$DJANGO_SUPERUSER_USERNAME' already exists; its password was left as it is"
    password_note="$DJANGO_SUPERUSER_PASSWORD (unless changed since up.sh created the user)"
fi

# --- metrics of many processes ------------------------------------------------------------
# gunicorn's and Celery's processes write their counters to files here, which /metrics
# adds up (config/metrics.py). Emptied when none of them runs: old files would count again.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$DATA/metrics}
if ! live_pid "$GUNICORN_PIDFILE" gunicorn >/dev/null && ! live_pid "$WORKER_PIDFILE" celery >/dev/null &&
    ! live_pid "$MAIL_WORKER_PIDFILE" celery >/dev/null && ! live_pid "$BEAT_PIDFILE" celery >/dev/null; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -type f -delete
fi
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

# --- gunicorn, Celery worker, Celery beat ----------------------------------------------
if pid=$(live_pid "$GUNICORN_PIDFILE" gunicorn); then
    say "gunicorn already running (pid $pid)"
else
    rm -f "$GUNICORN_PIDFILE"
    # gunicorn's control socket (for gunicornc) defaults to ~/.gunicorn/gunicorn.ctl, shared
    # by every checkout: keep it with this checkout's runtime files.
    control_socket=(--control-socket "$RUN_DIR/gunicorn.ctl")
    if ((${#RUN_DIR} + 13 > SOCKET_PATH_MAX)); then
        control_socket=(--no-control-socket)
    fi
    info "Starting gunicorn on $BIND ($WEB_CONCURRENCY workers of $WEB_THREADS threads)"
    # Threaded workers, one process per core: a request that waits (for the read model,
    # a slow client) holds one thread, not a whole process. The longest request line is
    # raised to 8190 bytes: valid queries with long multi-byte search terms need more than
    # the default 4094 and would get
    # gunicorn's HTML 414 instead of our JSON.
    "$VENV/bin/gunicorn" config.wsgi:application \
        --chdir "$ROOT" \
        --bind "$BIND" \
        --worker-class gthread \
        --workers "$WEB_CONCURRENCY" \
        --threads "$WEB_THREADS" \
        --limit-request-line 8190 \
        --daemon \
        --pid "$GUNICORN_PIDFILE" \
        --error-logfile "$GUNICORN_LOG" \
        --access-logfile "$GUNICORN_ACCESS_LOG" \
        --capture-output \
        --config "$ROOT/config/gunicorn.py" \
        --logger-class config.gunicorn_logging.Logger \
        "${control_socket[@]}" ||
        {
            show_log_tail "$GUNICORN_LOG"
            die "gunicorn did not start"
        }
    STARTED+=("gunicorn")
fi
printf '%s\n' "$BASE_URL" >"$WEB_URL_FILE"

# Celery runs from the project root; --workdir makes the re-executed detached worker
# chdir back there (a detached process starts in /).
start_celery() {
    local label=$1 command=$2 pidfile=$3 logfile=$4 pid
    shift 4
    if pid=$(live_pid "$pidfile" celery); then
        say "Celery $label already running (pid $pid)"
        return 0
    fi
    rm -f "$pidfile"
    info "Starting Celery $label"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/celery" --workdir "$ROOT" -A config "$command" \
        --detach --loglevel INFO --umask 022 \
        --pidfile "$pidfile" --logfile "$logfile" "$@" || {
        show_log_tail "$logfile"
        die "Celery $label did not start"
    }
    STARTED+=("Celery $label")
}
# The default queue (subscribers, replays) on processes, one per core; the mail queue on
# threads, since a send mostly waits on the relay. Distinct node names, so that the
# two (and those of other machines) can be told apart.
start_celery worker worker "$WORKER_PIDFILE" "$WORKER_LOG" --hostname "worker@%h" --queues celery
start_celery "mail worker" worker "$MAIL_WORKER_PIDFILE" "$MAIL_WORKER_LOG" --hostname "mail@%h" \
    --queues "$MAIL_QUEUE" --pool threads --concurrency "$MAIL_WORKER_CONCURRENCY"
start_celery beat beat "$BEAT_PIDFILE" "$BEAT_LOG" --schedule "$BEAT_SCHEDULE"

# --- wait until it serves --------------------------------------------------------------
info "Waiting up to ${HEALTH_TIMEOUT}s for $BASE_URL/health"
wait_start=$SECONDS
deadline=$((SECONDS + HEALTH_TIMEOUT))
until [[ $(http_status "$BASE_URL/health") == 200 ]]; do
    # The daemonized master writes its pidfile a moment after the launcher returns.
    if ! live_pid "$GUNICORN_PIDFILE" gunicorn >/dev/null && ((SECONDS - wait_start >= 2)); then
        show_log_tail "$GUNICORN_LOG"
        die "gunicorn exited (see the log above; a port already in use shows as 'Connection in use')"
    fi
    if ((SECONDS >= deadline)); then
        show_log_tail "$GUNICORN_LOG"
        die "$BASE_URL/health did not answer 200 within ${HEALTH_TIMEOUT}s"
    fi
    sleep 0.5
done

# A detached Celery process that cannot import the project dies right after forking.
check_celery() {
    local name=$1 pidfile=$2 logfile=$3 i
    for ((i = 0; i < 50; i++)); do
        live_pid "$pidfile" celery >/dev/null && return 0
        sleep 0.2
    done
    show_log_tail "$logfile"
    die "Celery $name is not running (log: ${logfile#"$ROOT"/})"
}
check_celery worker "$WORKER_PIDFILE" "$WORKER_LOG"
check_celery "mail worker" "$MAIL_WORKER_PIDFILE" "$MAIL_WORKER_LOG"
check_celery beat "$BEAT_PIDFILE" "$BEAT_LOG"

ready_status=$(http_status "$BASE_URL/ready")
if [[ $ready_status != 200 ]]; then
    warn "$BASE_URL/ready answers $ready_status: $(http_body "$BASE_URL/ready")"
fi

say ""
if ((${#STARTED[@]})); then
    say "Started: $(join_by ', ' "${STARTED[@]}")."
else
    say "Nothing needed starting."
fi
say "Up: $BASE_URL (ready: $ready_status)"
print_urls "$BASE_URL" "$password_note"
