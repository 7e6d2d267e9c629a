"""Checks of a configuration against this machine, made by `check`, `start` and the master.

Config validation (:mod:`gsuper.config`) says whether the file is well formed; this says whether
it can run here: rundir and logdir safe to write into (:func:`gsuper.fsafe.unsafe_dir`), the
control socket's path within the ``AF_UNIX`` limit, enough descriptors under the hard
``RLIMIT_NOFILE``, and (a warning only) a ``memory_limit`` below what the runner needs at rest.
"""

from __future__ import annotations

import os
import resource

from gsuper import fsafe
from gsuper.config import GsuperConfig
from gsuper.control import MAX_CONNECTIONS

#: sockaddr_un.sun_path is 108 bytes with its terminating NUL.
SOCKET_PATH_MAX = 107
#: Descriptors of the master beyond its workers: stdio, the pid file, the master log, the
#: control listener, libev's own, /dev/null and the pipes of a spawn in progress, and slack.
BASE_FDS = 48
#: Each live worker holds two pipe read ends in the master (its output and its status reports).
FDS_PER_WORKER = 2
#: A worker of a program with memory_limit: its root's /proc statm and children files, held for
#: the memory sampler (gsuper/memsample.py); each descendant it forks holds two more while it lives.
FDS_PER_SAMPLED_WORKER = 2
#: Resident size of a runner's interpreter doing nothing; a memory_limit below it cannot hold.
RESTING_RSS = {"php": 10 << 20, "python": 9 << 20}


def descriptors_needed(cfg: GsuperConfig) -> int:
    """How many open files the master needs at most for this configuration."""
    workers = sum(p.numprocs for p in cfg.programs.values())
    sampled = sum(p.numprocs for p in cfg.programs.values() if p.memory_limit_bytes)
    return BASE_FDS + FDS_PER_WORKER * workers + FDS_PER_SAMPLED_WORKER * sampled + len(cfg.programs) + MAX_CONNECTIONS


def errors(cfg: GsuperConfig) -> list[str]:
    """What keeps this configuration from running safely here, one sentence each."""
    found = [why for why in (fsafe.unsafe_dir(cfg.rundir), fsafe.unsafe_dir(cfg.logdir)) if why]
    if len(os.fsencode(cfg.sockfile)) > SOCKET_PATH_MAX:
        found.append(
            f"{cfg.path}: [gsuper] rundir: the control socket {cfg.sockfile} would be "
            f"{len(os.fsencode(cfg.sockfile))} bytes long, over the {SOCKET_PATH_MAX} a Unix socket path may have; "
            "use a shorter rundir"
        )
    needed = descriptors_needed(cfg)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        workers = sum(p.numprocs for p in cfg.programs.values())
        found.append(
            f"{cfg.path}: {workers} workers need about {needed} open files in the master, over the hard limit of {hard} "
            f"(ulimit -Hn); raise it (LimitNOFILE= under systemd, ulimit -n) or run fewer workers"
        )
    return found


def warnings(cfg: GsuperConfig) -> list[str]:
    """What will probably not work as meant, one sentence each."""
    found = []
    for p in cfg.programs.values():
        resting = RESTING_RSS.get(p.runner)
        if resting and p.memory_limit_bytes and p.memory_limit_bytes < resting:
            found.append(
                f"{cfg.path}: [program:{p.name}] memory_limit: {p.memory_limit_bytes >> 20}M is below the "
                f"{resting >> 20}M the {p.runner} runner uses at rest; every worker would be replaced at once"
            )
    return found


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (systemd's soft 1024 is too few for 500
    workers). Returns the limits now in force; a refusal leaves them as they were."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft, hard
