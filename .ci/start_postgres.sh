#!/usr/bin/env bash
# Install (if needed) and start a throw-away PostgreSQL server on loopback for the SQL tests.
# Prints the SQLAlchemy URL on stdout; prints nothing if no server could be started.
set -u
# a free loopback port unless PGPORT_TEST names one (a server left by an earlier run keeps its own)
PORT="${PGPORT_TEST:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if [ "$(id -u)" != "0" ]; then
  echo "start_postgres: not root, PostgreSQL tests will skip" >&2
  exit 0
fi
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 \
    || { echo "start_postgres: could not install PostgreSQL" >&2; exit 0; }
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PGDATA=$(mktemp -d /tmp/rl-trading-pg.XXXXXX)
chown postgres:postgres "$PGDATA"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >&2 || exit 0
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1" start >&2 || exit 0
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres rl_trading_test >&2 || exit 0
echo "postgresql+psycopg2://postgres@127.0.0.1:$PORT/rl_trading_test"
