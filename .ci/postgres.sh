#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL server on 127.0.0.1 for the record tests, then print
# its URL on stdout (everything else goes to stderr). Idempotent: a second run finds the
# server running and prints the same URL. Needs Debian's postgresql package (installed here
# with apt-get when missing and we are root). Stop it with: pg_ctl -D "$PGTEST_DIR" stop
set -euo pipefail
PGTEST_DIR=${PGTEST_DIR:-/tmp/bridge-ci-postgres}
PGTEST_PORT=${PGTEST_PORT:-54329}
URL="postgresql://postgres@127.0.0.1:${PGTEST_PORT}/postgres"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ]; then
    if [ "$(id -u)" = 0 ]; then
        { apt-get update -q && apt-get install -y -q postgresql; } >&2
    else
        echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
fi
BIN=$(bindir)

# initdb and postgres refuse to run as root: run them as the postgres user then.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ ! -f "$PGTEST_DIR/PG_VERSION" ]; then
    mkdir -p "$PGTEST_DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGTEST_DIR"
    as_owner "$BIN/initdb" -D "$PGTEST_DIR" -U postgres --auth=trust -E UTF8 >&2
fi
if ! as_owner "$BIN/pg_ctl" -D "$PGTEST_DIR" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$PGTEST_DIR" -l "$PGTEST_DIR/server.log" -w -t 30 start \
        -o "-h 127.0.0.1 -p $PGTEST_PORT -k $PGTEST_DIR" >&2
fi
for _ in $(seq 1 50); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PGTEST_PORT"; then
        echo "$URL"
        exit 0
    fi
    sleep 0.2
done
echo "postgres.sh: PostgreSQL did not become ready on 127.0.0.1:$PGTEST_PORT" >&2
exit 1
