"""Proportional set size (PSS) of worker trees, for `pss_bytes` in status.

RSS counts every page a process maps; PSS divides each shared page among the processes that
map it. Warm workers share the template's pages copy-on-write, so their RSS looks like a cold
worker's while their PSS shows what each one really costs. The kernel sums it per process in
/proc/PID/smaps_rollup (Linux 4.14+); reading it walks the page tables, so status reads it only
when asked (not the memory monitor, which keeps to RSS, as `memory_limit` is defined on RSS).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psutil


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
    total = process_pss(pid)
    if total is None:
        return None
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        total += process_pss(child.pid) or 0
    return total


def add_pss(rows: Iterable[dict[str, Any]]) -> None:
    """Set `pss_bytes` in each status row (None for a worker without a live process)."""
    for row in rows:
        pid = row.get("pid")
        row["pss_bytes"] = tree_pss(pid) if isinstance(pid, int) else None
