#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server, exported as
# ALLIANCE_TEST_PG_URL. Under CI=true PostgreSQL is installed from Debian's
# packages when missing and must start; elsewhere its absence is reported
# loudly and the PostgreSQL tests skip.
set -euo pipefail

find_pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb ]] && { echo "$d"; return 0; }
    done
    return 1
}

PG_BIN=$(find_pg_bin || true)
if [[ -z $PG_BIN && ${CI:-} == true && $(id -u) == 0 ]]; then
    echo "with_postgres: installing Debian's postgresql package" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PG_BIN=$(find_pg_bin || true)
fi
if [[ -z $PG_BIN ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "with_postgres: PostgreSQL is required under CI=true but could not be installed" >&2
        exit 1
    fi
    echo "with_postgres: *** PostgreSQL not found: PostgreSQL tests will be SKIPPED ***" >&2
    exec "$@"
fi

DATA=$(mktemp -d /tmp/alliance-pg.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { "$@"; }
if [[ $(id -u) == 0 ]]; then
    # initdb refuses root: run the server as the postgres user.
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres "$DATA"
    as_pg() { runuser -u postgres -- "$@"; }
fi
cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$DATA/db" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DATA"
}
trap cleanup EXIT
as_pg "$PG_BIN/initdb" -D "$DATA/db" -U postgres -A trust -E UTF8 --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$DATA/db" -l "$DATA/log" -w -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
export ALLIANCE_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
echo "with_postgres: throw-away PostgreSQL on 127.0.0.1:$PORT" >&2
set +e
"$@"
status=$?
set -e
exit $status
