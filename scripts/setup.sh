#!/usr/bin/env bash
# Everything gsuper's demo and tests need on a fresh Debian machine: php-cli with the redis
# extension, redis-server (for the queue examples), and a venv with gsuper installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qix redis || need+=(php-redis)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Laravel 8, for the warm Laravel bridge (examples/laravel/) and its test and benchmark.
[ -f /usr/share/php/Illuminate/autoload.php ] || need+=(php-laravel-framework)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup: installing ${need[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,dev]'
