#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback (installing Debian's package if
# needed), runs the command given with ADAPTSERVE_TEST_DATABASE_URL pointing at it,
# then stops and removes the server. Used by .ci/run so the test suite runs against
# PostgreSQL as well as SQLite.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${ADAPTSERVE_TEST_PG_PORT:-54329}
DATA=$(mktemp -d /tmp/adaptserve-pg.XXXXXX)
chown postgres "$DATA"
run_as_postgres() { su postgres -s /bin/bash -c "$*"; }
run_as_postgres "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
run_as_postgres "$BIN/pg_ctl -D $DATA -o '-h 127.0.0.1 -p $PORT -k $DATA' -l $DATA/server.log -w start" >/dev/null
trap 'run_as_postgres "$BIN/pg_ctl -D $DATA -m fast -w stop" >/dev/null; rm -rf "$DATA"' EXIT

export ADAPTSERVE_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
"$@"
