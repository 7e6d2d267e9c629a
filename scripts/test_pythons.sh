#!/usr/bin/env bash
# gsuper supports Python 3.9 to 3.13. This runs the fast tier on every one of those found on
# this machine (besides the one of .venv, which the whole suite ran on), and the core tests
# (tests/test_core.py, without the timing ones) on the oldest and the newest found: about 3 to
# 4 minutes for four interpreters, so that the whole CI run stays within its time budget.
# Each interpreter gets its own .venv-X.Y (gitignored) with gsuper's test dependencies.
#   GSUPER_PYTHONS="3.9 3.13" scripts/test_pythons.sh    choose the versions
#   GSUPER_PYTHONS= scripts/test.sh                       skip this step
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=(tests/test_states.py tests/test_policy.py tests/test_worker.py tests/test_reload_plan.py
      tests/test_monitor.py tests/test_config.py tests/test_stdlog.py tests/test_guard.py
      tests/test_scaling.py tests/test_web_unit.py tests/test_hardening_fast.py tests/test_expand.py
      tests/test_import.py tests/test_client.py tests/test_memsample.py tests/test_warm_spawner.py)
CORE=(tests/test_core.py)
main=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)

# An interpreter on PATH, else one under pyenv (whose shims answer only for its chosen version).
find_python() {
  local v=$1 py
  for py in "$(command -v "python$v" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
    if [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import sys' >/dev/null 2>&1; then
      echo "$py"
      return
    fi
  done
}

found=()
pythons=()
for v in ${GSUPER_PYTHONS-3.9 3.10 3.11 3.12 3.13}; do
  [ "$v" = "$main" ] && continue
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "python $v: not found, skipped"
    continue
  fi
  found+=("$v")
  pythons+=("$py")
done
if ((${#found[@]} == 0)); then
  echo "no other Python 3.9 to 3.13 found; nothing more to run"
  exit 0
fi

status=0
last=$((${#found[@]} - 1))
for i in "${!found[@]}"; do
  v=${found[$i]}
  venv=".venv-$v"
  if [ ! -x "$venv/bin/python" ]; then
    echo "python $v: creating $venv"
    "${pythons[$i]}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  fi
  "$venv/bin/python" -m pip install -q -e '.[test]' >/dev/null
  tests=("${FAST[@]}")
  if ((i == 0 || i == last)); then
    tests+=("${CORE[@]}")
  fi
  echo "python $v: ${tests[*]}"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${GSUPER_TEST_JOBS:-2}" -m 'not timing' "${tests[@]}" || status=1
done
exit $status
