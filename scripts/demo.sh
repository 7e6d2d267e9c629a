#!/usr/bin/env bash
# Set up (scripts/setup.sh), then start the example gsuper.ini: real PHP, Python and shell
# workers consuming real queues. Stop it with: .venv/bin/gsuper -s stop -c gsuper.ini
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/gsuper -s check -c gsuper.ini
.venv/bin/gsuper -s start -c gsuper.ini
# Let the workers come up, then show them.
for _ in $(seq 50); do
  .venv/bin/gsuper -s status -c gsuper.ini --json | grep -q '"STARTING"' || break
  sleep 0.1
done
.venv/bin/gsuper -s status -c gsuper.ini
echo
echo "Running. Try:  .venv/bin/gsuper -s tail -c gsuper.ini -p php_spool -f"
echo "Stop with:     .venv/bin/gsuper -s stop -c gsuper.ini"
