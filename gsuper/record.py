"""The takeover record: which process groups a master's workers lead, kept in `rundir/workers.json`.

The master rewrites it as workers come and go. It serves two readers:
- the next `start` after a master was killed (:func:`end_leftovers`), which ends what the dead
  master's workers left behind before it starts anything;
- `gsuper -s exit` (:func:`force_exit`), which SIGKILLs every group at once, the master too.

The record says when the master started: every process of those groups was created after that,
which tells them from unrelated processes that reuse a pid.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gsuper import fsafe
from gsuper.osutil import killpg


@dataclass(frozen=True)
class Entry:
    """One live worker: the process group it leads, and how long it may take to stop."""

    pgid: int
    stop_timeout_s: float


@dataclass(frozen=True)
class Record:
    """What a master wrote: its pid, its start time (epoch seconds) and its workers."""

    master: int
    master_started: float
    workers: tuple[Entry, ...]


def write(path: str, master: int, master_started: float, entries: Iterable[Entry]) -> None:
    """Replace the record atomically (a temporary file, then a rename). Raises OSError."""
    doc = {
        "master": master,
        "master_started": master_started,
        "workers": [{"pgid": e.pgid, "stop_timeout_s": e.stop_timeout_s} for e in entries],
    }
    fsafe.write_atomic(path, json.dumps(doc).encode())  # O_EXCL temp file: no planted link is followed


def read(path: str) -> Record | None:
    """The record at `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
        entries = tuple(Entry(int(w["pgid"]), float(w["stop_timeout_s"])) for w in doc["workers"])
        return Record(int(doc["master"]), float(doc["master_started"]), entries)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def group_members(groups: Iterable[int], since: float) -> list[tuple[int, int]]:
    """(pgid, pid) of live processes in the given groups that started after `since`."""
    import psutil  # only where a record is acted on: the CLI's other commands start faster

    wanted = set(groups)
    found = []
    for proc in psutil.process_iter(["create_time", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["create_time"] < since:
                continue
            pgid = os.getpgid(proc.pid)
        except (OSError, TypeError):
            continue
        if pgid in wanted and proc.pid != os.getpid():
            found.append((pgid, proc.pid))
    return found


def end_leftovers(path: str, sleep: Callable[[float], object], announce: Callable[[int], None]) -> int:
    """After a master was killed: TERM what its workers left, wait each group's own stop_timeout
    at most, then SIGKILL what is still there. `announce(n)` is told how many processes were
    found before anything is done to them. Returns that number."""
    record = read(path)
    if record is None:
        return 0
    timeouts = {e.pgid: e.stop_timeout_s for e in record.workers}
    members = group_members(timeouts, record.master_started)
    if not members:
        return 0
    announce(len(members))
    for pgid in {pg for pg, _ in members}:
        killpg(pgid, signal.SIGTERM)
    start = time.monotonic()
    while True:
        left = {pg for pg, _ in group_members(timeouts, record.master_started)}
        waited = time.monotonic() - start
        overdue = {pg for pg in left if waited >= timeouts[pg]}
        for pgid in overdue:
            killpg(pgid, signal.SIGKILL)
        if not left - overdue:
            return len(members)
        sleep(0.05)


def force_exit(master_pid: int, path: str) -> int:
    """`gsuper -s exit`: freeze the master, SIGKILL every group it leads and the master itself.

    Returns how many worker process groups were sent SIGKILL. The groups are the master's
    children (each leads its own) plus those of the record, so a worker spawned just before the
    freeze is not missed.
    """
    try:
        os.kill(master_pid, signal.SIGSTOP)  # frozen, the master can spawn nothing more
    except ProcessLookupError:
        pass
    groups: set[int] = set()
    try:
        import psutil

        groups.update(child.pid for child in psutil.Process(master_pid).children())
    except Exception:  # noqa: BLE001 - the record below is the fallback
        pass
    record = read(path)
    if record is not None:
        groups.update(e.pgid for e in record.workers)
    for pgid in groups:
        killpg(pgid, signal.SIGKILL)
    try:
        os.kill(master_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return len(groups)
