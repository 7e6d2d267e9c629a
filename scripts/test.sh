#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check and run the whole test suite (in two pytest
# workers, then the timing tests alone); then the fast tier and the core tests on the other
# Pythons from 3.9 to 3.13 found here (scripts/test_pythons.sh). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check gsuper/
.venv/bin/mypy gsuper/
# The suite mostly waits on real processes: GSUPER_TEST_JOBS (2) pytest workers share it. The
# timing tests (a CPU share, a time bound) then run alone, on an otherwise quiet machine.
jobs=${GSUPER_TEST_JOBS:-2}
# (pytest's exit status 5: the arguments selected no test of that kind.)
.venv/bin/python -m pytest -q -n "$jobs" -m "not timing" "$@" || [ $? -eq 5 ]
.venv/bin/python -m pytest -q -m timing "$@" || [ $? -eq 5 ]
exec scripts/test_pythons.sh
