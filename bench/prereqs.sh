#!/usr/bin/env bash
# `make bench` / `make profile` prerequisites: wrk, taskset, redis-server and (for its baseline)
# nginx from Debian's packages; py-spy and pyinstrument (the `bench` extra) into the virtualenv.
set -euo pipefail
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || [ -n "${BENCH_NO_NGINX:-}" ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "make bench needs: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
BIN=${VENV:-.venv}/bin
if ! [ -x "$BIN/py-spy" ] || ! "$BIN/python" -c 'import pyinstrument' 2>/dev/null; then
  "$BIN/python" -m pip install --quiet -e '.[bench]'
fi
