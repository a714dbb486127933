#!/usr/bin/env bash
# Stop what scripts/up.sh started: gunicorn, the Celery worker and beat, then the
# embedded Redis and PostgreSQL. Waits until each is gone and leaves no process of this
# checkout behind. Data stays in .data/ (delete .data/pg to start from an empty database).
# Running it when nothing runs is fine.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

# Anything of this checkout still alive (a gunicorn worker or Celery pool child whose
# parent was killed, a server started by hand with .data/ paths) goes too.
sweep_leftovers() {
    local pid pids
    mapfile -t pids < <(project_pids "$1")
    ((${#pids[@]})) || return 0
    for pid in "${pids[@]}"; do
        warn "leftover process $pid: $(pid_cmdline "$pid")"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        if ! wait_gone "$pid" 10; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || warn "process $pid does not die"
        fi
    done
    STOPPED+=("${#pids[@]} leftover process(es)")
}

# The web server and Celery first, so nothing talks to the databases while they stop.
# SIGTERM is graceful for all three: gunicorn finishes requests in flight, the worker
# finishes its current tasks (acks_late: anything cut off by the SIGKILL fallback is
# redelivered), beat saves its schedule.
stop_pidfile gunicorn "$GUNICORN_PIDFILE" gunicorn TERM 35
stop_pidfile "Celery worker" "$WORKER_PIDFILE" celery TERM 60
stop_pidfile "Celery mail worker" "$MAIL_WORKER_PIDFILE" celery TERM 60
stop_pidfile "Celery beat" "$BEAT_PIDFILE" celery TERM 15
rm -f "$WEB_URL_FILE"
# Orphans of the app (e.g. gunicorn workers of a killed master) before the servers stop.
sweep_leftovers app

stop_embedded_redis redis
stop_embedded_redis redis-test # left by an interrupted scripts/test.sh
if [[ -f $PG_DATA/postmaster.pid ]]; then
    [[ -x $PY ]] || warn ".venv is missing: stopping the embedded PostgreSQL with a signal"
    stop_embedded_postgres
fi

# Settings must not point at servers that are gone (they would fail with a connection
# error instead of the "DATABASE_URL is not set: run scripts/up.sh" hint).
if ! embedded_postgres_pid >/dev/null && ! embedded_redis_pid redis >/dev/null; then
    rm -f "$EMBEDDED_ENV"
fi

sweep_leftovers all

if ((${#STOPPED[@]})); then
    say "Stopped: $(join_by ', ' "${STOPPED[@]}")."
else
    say "Nothing was running."
fi

mapfile -t still < <(project_pids all)
if ((${#still[@]})); then
    die "processes still running: ${still[*]}"
fi
