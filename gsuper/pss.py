"""Proportional set size (PSS) of worker trees, for `pss_bytes` in status.

RSS counts every page a process maps; PSS divides each shared page among the processes that
map it. Warm workers share the template's pages copy-on-write, so their RSS looks like a cold
worker's while their PSS shows what each one really costs. The kernel sums it per process in
/proc/PID/smaps_rollup (Linux 4.14+); reading it walks the page tables (about 65 µs a process
here), so only status's memory sample reads it, at most once a second and shared by the requests
that come together; the memory monitor keeps to RSS, as `memory_limit` is defined on RSS.
"""

from __future__ import annotations

from collections.abc import Iterable

from gsuper.memsample import proc_table, tree_members


def process_pss(pid: int) -> int | None:
    """PSS of one process in bytes, or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_pss(pid: int) -> int | None:
    """PSS of a process plus all its descendants, in bytes (None when the root is gone)."""
    _rss, children = proc_table()
    return members_pss(tree_members(pid, children))


def members_pss(pids: Iterable[int]) -> int | None:
    """The summed PSS of these processes (the first is the root: None when it is gone)."""
    total: int | None = None
    for i, pid in enumerate(pids):
        value = process_pss(pid)
        if value is None and i == 0:
            return None
        total = (total or 0) + (value or 0)
    return total
