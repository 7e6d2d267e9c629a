"""Command templates: from a program's settings to the argv and environment of one worker.

The php, python and shell runners are files under ``runners/`` (installed inside the package as
``gsuper/runner_files``); they read their settings from ``GSUPER_*`` variables (docs/runners.md).

Spawning is a hot path (bench/supervise.py): argv, environment and paths are worked out once
per program config, and per worker only when a template uses ``%(process_num)``.
"""

from __future__ import annotations

import functools
import os
import shlex
import stat
import subprocess

from gsuper.config import RUNNER_INTERPRETERS, ProgramConfig, WorkerSettings, worker_settings

_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER_FILES = {"php": "php/worker.php", "python": "python/worker.py", "shell": "shell/worker.sh"}


def runners_dir() -> str:
    """The folder of the runner files: inside the installed package, or the checkout's runners/."""
    installed = os.path.join(_HERE, "runner_files")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_HERE), "runners")


def runner_file(runner: str) -> str | None:
    """The file a runner's interpreter runs (None for exec)."""
    name = _RUNNER_FILES.get(runner)
    return os.path.join(runners_dir(), name) if name else None


def _key(program: ProgramConfig, index: int) -> int:
    # Programs whose templates do not use %(process_num) share one cache entry for every worker.
    return index if program.per_worker else 0


@functools.lru_cache(maxsize=8192)
def _settings(program: ProgramConfig, index: int) -> WorkerSettings:
    return worker_settings(program, index)


def settings(program: ProgramConfig, index: int) -> WorkerSettings:
    """One worker's expanded command, directory, environment and log files (cached).

    The config was checked by expanding every worker's templates, so this does not raise for a
    worker below numprocs; above it (after `scale`), a bad value shows at spawn.
    """
    return _settings(program, _key(program, index))


@functools.lru_cache(maxsize=8192)
def _argv(program: ProgramConfig, index: int) -> tuple[str, ...]:
    if program.runner == "exec":
        command = _settings(program, index).command
        assert command is not None
        return tuple(shlex.split(command))
    interpreter = program.interpreter or RUNNER_INTERPRETERS[program.runner]
    runner_file = os.path.join(runners_dir(), _RUNNER_FILES[program.runner])
    if program.runner == "php" and program.opcache_dir and _php_has_opcache(interpreter) and _safe_dir(program.opcache_dir):
        # The CLI compiles every file at every start; a file cache keeps the compiled code
        # across worker lives (the Laravel bridge's boot: ~52 ms -> ~25 ms here).
        options = ("-d", "opcache.enable_cli=1", "-d", f"opcache.file_cache={program.opcache_dir}")
        return (*shlex.split(interpreter), *options, runner_file)
    return (*shlex.split(interpreter), runner_file)


@functools.lru_cache(maxsize=64)
def _php_has_opcache(interpreter: str) -> bool:
    """Whether this php has the opcache extension (asked once per interpreter)."""
    try:
        proc = subprocess.run(
            [*shlex.split(interpreter), "-r", "echo extension_loaded('Zend OPcache') ? 1 : 0;"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.stdout.strip() == b"1"


def _safe_dir(path: str) -> bool:
    """Create the cache folder (0700) if missing; use it only if it is a real folder of ours."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def argv_for(program: ProgramConfig, index: int = 0) -> list[str]:
    """The command line that starts worker `index` of the program (worked out once per config)."""
    return list(_argv(program, _key(program, index)))


@functools.lru_cache(maxsize=8192)
def _program_env(program: ProgramConfig, index: int) -> dict[str, str]:
    # The master's environment does not change while it runs: copy it once per program config.
    env = dict(os.environ)
    user = program.user
    if user is not None:
        # As a login would: tools (composer, git, pip) look in HOME; `environment` may override.
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(_settings(program, index).environment)
    env.update(
        GSUPER_PROGRAM=program.name,
        GSUPER_MODE=program.mode,
        GSUPER_MEMORY_LIMIT=str(program.memory_limit_bytes),
        GSUPER_USLEEP=str(program.usleep_us),
        GSUPER_ON_ERROR=program.on_error,
    )
    if program.runner != "exec":
        env.update(
            GSUPER_SCRIPT=program.script or "",
            GSUPER_HANDLER=program.handler or "",
            GSUPER_BOOTSTRAP="\n".join(program.bootstrap),
        )
    if program.after_fork:
        env["GSUPER_AFTER_FORK"] = program.after_fork
    return env


def env_for(
    program: ProgramConfig, index: int, status_fd: int, max_request: int, busy_fd: int | None = None, deadline_ns: int = 0
) -> dict[str, str]:
    """The environment of one worker: the master's, the program's `environment`, then GSUPER_*.

    `max_request` is this life's limit, with the jitter already drawn; `busy_fd` the worker's
    busy page (gsuper.guard); `deadline_ns` the CLOCK_MONOTONIC time after which a loop-mode
    runner ends its life between requests (max_lifetime, jitter drawn), 0 for none.
    """
    env = dict(_program_env(program, _key(program, index)))
    env.update(GSUPER_WORKER=str(index), GSUPER_STATUS_FD=str(status_fd), GSUPER_MAX_REQUEST=str(max_request))
    if busy_fd is not None:
        env["GSUPER_BUSY_FD"] = str(busy_fd)
    if deadline_ns:
        env["GSUPER_DEADLINE_NS"] = str(deadline_ns)
    return env
