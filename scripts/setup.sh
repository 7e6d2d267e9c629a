#!/usr/bin/env bash
# Everything gsuper's demo and tests need on a fresh Debian machine: php-cli with the redis
# extension, redis-server (for the queue examples), chromium (the dashboard test), and a venv with gsuper installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qix redis || need+=(php-redis)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# setpriv starts every worker; unshare runs the PID 1 test in a PID namespace (both util-linux).
{ command -v setpriv && command -v unshare; } >/dev/null 2>&1 || need+=(util-linux)
# gsuper -s import: real Laravel 8 and Symfony Messenger workers in its tests, node for .config.js.
[ -f /usr/share/php/Illuminate/autoload.php ] || need+=(php-laravel-framework)
[ -f /usr/share/php/Symfony/Component/Messenger/autoload.php ] || need+=(php-symfony-messenger)
[ -f /usr/share/php/Symfony/Component/Messenger/Bridge/Redis/autoload.php ] || need+=(php-symfony-redis-messenger)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# The dashboard's browser test runs headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Event hook examples: curl (webhook) and logger (syslog, from bsdutils).
command -v curl >/dev/null 2>&1 || need+=(curl)
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
