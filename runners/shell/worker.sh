#!/bin/sh
# gsuper's shell runner: `sh /abs/runners/shell/worker.sh`, started by the master in the
# program's directory with (in the environment):
#   GSUPER_PROGRAM, GSUPER_WORKER  program name, worker index (from 0)
#   GSUPER_BOOTSTRAP               newline-separated files, sourced in order with `set -a`
#                                  on, so every variable they set is exported to the script
#   GSUPER_SCRIPT                  the script, then exec'd (run directly if it is executable,
#                                  else with sh): it keeps this process's pid
#   GSUPER_STATUS_FD               left open for the script, which may report on it itself
# No request loop: shell programs are daemon-style. A missing bootstrap file or script is
# said on stderr and ends the worker with 78 (EX_CONFIG).

__gsuper_title="${GSUPER_PROGRAM:-shell}#${GSUPER_WORKER:-0}"

__gsuper_fail() {
    printf 'gsuper: %s: cannot start: %s\n' "$__gsuper_title" "$1" >&2
    exit 78
}

# A name without a slash would be looked up on PATH by `.` and `exec`: make it a path.
__gsuper_path() {
    case $1 in
        */*) printf '%s\n' "$1" ;;
        *) printf './%s\n' "$1" ;;
    esac
}

[ -n "${GSUPER_SCRIPT:-}" ] || __gsuper_fail "no script given (GSUPER_SCRIPT is empty)"
__gsuper_script=$(__gsuper_path "$GSUPER_SCRIPT")
[ -f "$__gsuper_script" ] || __gsuper_fail "script not found: $GSUPER_SCRIPT"

if [ -n "${GSUPER_BOOTSTRAP:-}" ]; then
    # Split on newlines only, without pathname expansion, into the positional parameters.
    set -f
    __gsuper_ifs_set=${IFS+x}
    __gsuper_ifs=$IFS
    IFS='
'
    # shellcheck disable=SC2086
    set -- $GSUPER_BOOTSTRAP
    if [ -n "$__gsuper_ifs_set" ]; then IFS=$__gsuper_ifs; else unset IFS; fi
    set +f
    for __gsuper_hook in "$@"; do
        [ -f "$__gsuper_hook" ] || __gsuper_fail "bootstrap file not found: $__gsuper_hook"
    done
    for __gsuper_hook in "$@"; do
        set -a
        # shellcheck disable=SC1090
        . "$(__gsuper_path "$__gsuper_hook")"
        set +a
    done
    set --
fi

unset __gsuper_hook __gsuper_ifs __gsuper_ifs_set __gsuper_title
if [ -x "$__gsuper_script" ]; then
    exec "$__gsuper_script"
fi
exec sh "$__gsuper_script"
