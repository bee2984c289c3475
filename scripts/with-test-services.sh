#!/usr/bin/env bash
# Run a command with REDIS_URL, DATABASE_URL, RABBITMQ_URL and NATS_URL pointing at real servers.
# Order of preference: the variables when already set; servers on 127.0.0.1:6379 / :5432 / :5672 /
# :4222; otherwise throwaway servers started from local binaries (redis-server, PostgreSQL's
# initdb/pg_ctl, rabbitmq-server, nats-server), stopped again when the command ends.
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

if [ -z "${NATS_URL:-}" ]; then
  if port_open 4222; then
    export NATS_URL="nats://127.0.0.1:4222"
  elif command -v nats-server >/dev/null; then
    port=$(free_port); dir=$(mktemp -d)
    nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" -P "$dir/nats.pid" -l "$dir/nats.log" </dev/null &
    cleanup+=("kill $!; rm -rf $dir")
    for _ in $(seq 50); do port_open "$port" && break; sleep 0.1; done
    export NATS_URL="nats://127.0.0.1:$port"
    echo "started a throwaway nats-server (JetStream) on $NATS_URL"
  else
    echo "No NATS: start nats-server -js on 127.0.0.1:4222, set NATS_URL, or install it (apt-get install nats-server)." >&2
    exit 1
  fi
fi

if [ -z "${RABBITMQ_URL:-}" ]; then
  if port_open 5672; then
    export RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672/"
  elif command -v rabbitmq-server >/dev/null; then
    port=$(free_port); dir=$(mktemp -d); chmod 755 "$dir"
    node="rabbit-test-$port@localhost"
    # Its own config and env files: the machine's (/etc/rabbitmq) may pin the listener to 5672.
    touch "$dir/enabled_plugins" "$dir/rabbitmq-env.conf"
    echo "listeners.tcp.default = 127.0.0.1:$port" > "$dir/rabbitmq.conf"
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq "$dir"; fi
    RABBITMQ_NODENAME="$node" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_DIST_PORT="$(free_port)" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$dir/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      rabbitmq-server -detached
    cleanup+=("rabbitmqctl -n $node stop >/dev/null 2>&1; rm -rf $dir")
    for _ in $(seq 120); do port_open "$port" && break; sleep 0.5; done
    export RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$port/"
    echo "started a throwaway rabbitmq-server on $RABBITMQ_URL"
  else
    echo "No RabbitMQ: start one on 127.0.0.1:5672, set RABBITMQ_URL, or install it (apt-get install rabbitmq-server)." >&2
    exit 1
  fi
fi

"$@"
