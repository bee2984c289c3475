#!/usr/bin/env bash
# Run a command with REDIS_URL and DATABASE_URL pointing at real servers.
# Order of preference: the variables when already set; servers on 127.0.0.1:6379 / :5432;
# otherwise throwaway servers started from local binaries (redis-server, PostgreSQL's initdb/pg_ctl),
# stopped again when the command ends.
set -euo pipefail
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${REDIS_URL:-}" ]; then
  if port_open 6379; then
    export REDIS_URL="redis://127.0.0.1:6379/0"
  elif command -v redis-server >/dev/null; then
    port=$(free_port); dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
      --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    cleanup+=("kill \$(cat $dir/redis.pid); rm -rf $dir")
    for _ in $(seq 50); do port_open "$port" && break; sleep 0.1; done
    export REDIS_URL="redis://127.0.0.1:$port/0"
    echo "started a throwaway redis-server on $REDIS_URL"
  else
    echo "No Redis: start one on 127.0.0.1:6379, set REDIS_URL, or install redis-server (apt-get install redis-server)." >&2
    exit 1
  fi
fi

if [ -z "${DATABASE_URL:-}" ]; then
  if port_open 5432; then
    export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test"
  else
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$pgbin" ] || pgbin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")
    if [ ! -x "$pgbin/initdb" ]; then
      echo "No PostgreSQL: start one on 127.0.0.1:5432, set DATABASE_URL, or install it (apt-get install postgresql)." >&2
      exit 1
    fi
    port=$(free_port); dir=$(mktemp -d); chmod 755 "$dir"
    run_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; su postgres -c "$*"; else eval "$*"; fi; }
    run_pg "$pgbin/initdb -D $dir/data -U postgres -A trust >/dev/null"
    run_pg "$pgbin/pg_ctl -D $dir/data -o '-p $port -k $dir -c listen_addresses=127.0.0.1' -l $dir/pg.log -w start >/dev/null"
    cleanup+=("run_pg '$pgbin/pg_ctl -D $dir/data -m immediate stop' >/dev/null; rm -rf $dir")
    run_pg "$pgbin/createdb -h 127.0.0.1 -p $port -U postgres test"
    export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/test"
    echo "started a throwaway PostgreSQL on $DATABASE_URL"
  fi
fi

"$@"
