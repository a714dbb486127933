#!/usr/bin/env bash
# A PostgreSQL cluster of the benchmarks' own, with Debian's binaries and defaults
# (fsync and synchronous_commit on), so other work on the machine's shared cluster cannot
# hold back the feed: the horizon (pg_snapshot_xmin) spans every database of a cluster,
# so a long transaction in someone else's database delays every subscriber here.
#
#   bench/own_postgres.sh start   # prints the BENCH_PG_URL to export
#   bench/own_postgres.sh stop
#
# Data under .data/bench-pg (git-ignored), owned by the `postgres` system user when run
# as root (initdb refuses root). Port: BENCH_OWN_PG_PORT (5499).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA="$ROOT/.data/bench-pg"
PORT=${BENCH_OWN_PG_PORT:-5499}
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x $BIN/pg_ctl ]] || { echo "no pg_ctl found: set PG_BIN" >&2; exit 1; }

as_owner() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case ${1:-} in
    start)
        mkdir -p "$DATA"
        [[ $(id -u) == 0 ]] && chown postgres "$DATA"
        if [[ ! -f $DATA/cluster/PG_VERSION ]]; then
            as_owner "$BIN/initdb" -D "$DATA/cluster" -U postgres -A trust -E UTF8 >/dev/null
        fi
        if ! as_owner "$BIN/pg_ctl" -D "$DATA/cluster" status >/dev/null 2>&1; then
            as_owner "$BIN/pg_ctl" -D "$DATA/cluster" -l "$DATA/log" -w \
                -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=100" \
                start >/dev/null
        fi
        echo "export BENCH_PG_URL=postgres://postgres@127.0.0.1:$PORT"
        ;;
    stop)
        as_owner "$BIN/pg_ctl" -D "$DATA/cluster" -m fast -w stop >/dev/null 2>&1 || true
        echo "stopped"
        ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
