#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check and run the whole test suite; then the fast
# tier and the core tests on the other Pythons from 3.9 to 3.13 found here (scripts/test_pythons.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check gsuper/
.venv/bin/mypy gsuper/
.venv/bin/python -m pytest -q "$@"
exec scripts/test_pythons.sh
