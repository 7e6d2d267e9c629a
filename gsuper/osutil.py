"""Process set-up of the master: the libc calls it makes, each guarded.

`prctl` and `malloc_trim` are called through ctypes. On a libc without them (musl, as in
Alpine images) or without ctypes at all, each call returns False and says why once, in a
sentence: the master runs on without that nicety instead of failing to start.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("gsuper")

PR_SET_CHILD_SUBREAPER = 36

_libc: Any = None


def _call(name: str, *args: int) -> bool:
    """Call a libc function by name; False (and a logged sentence) when it cannot be called."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(_libc, name)
    except (ImportError, OSError, AttributeError) as exc:
        log.warning("libc has no %s (%s); going on without it", name, exc)
        return False
    return bool(fn(*args) != -1)


def become_subreaper() -> bool:
    """Make orphaned descendants of our workers come back to us (to be reaped and killed)."""
    ok = _call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if not ok:
        log.warning("cannot become a subreaper: processes a worker orphans go to init")
    return ok


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is gone or not ours to signal."""
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def trim_heap() -> bool:
    """Hand back to the system what start-up left free on the heap (glibc only)."""
    return _call("malloc_trim", 0)


def no_inherited_fds() -> None:
    """Mark every descriptor above stderr close-on-exec, so that none the master inherited (from
    a shell, a CI runner, a service manager) reaches a worker; workers are spawned without
    closing descriptors, so this is what keeps them clean."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def set_title(title: str) -> None:
    """The process title shown by ps (when setproctitle is installed)."""
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass


def start_time() -> float:
    """When this process started, in seconds since the epoch, as psutil's `create_time()`
    computes it (boot time from /proc/stat plus the start tick of /proc/self/stat), without
    importing psutil (1.6 MiB of the master's RSS)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return ticks / os.sysconf("SC_CLK_TCK") + btime
    except (OSError, ValueError, IndexError, StopIteration):
        import psutil

        return float(psutil.Process().create_time())
