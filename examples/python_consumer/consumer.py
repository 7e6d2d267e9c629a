"""A file-spool queue consumer, run by gsuper's python runner as `handler = consumer:handle`.

The queue is a folder: `produce.py` drops one `*.job` file per job into spool/ (written aside,
then renamed in, so a consumer never sees half a job). A worker claims a job by renaming it
into its own folder spool/work-N/: rename is atomic, so of several workers racing for the same
file exactly one wins. The winner appends one line to done.txt and deletes the claimed file.

Each call of `handle()` is one request: at most one job. With nothing to do it sleeps a little
(IDLE_SLEEP) so an idle worker polls gently; a stop is honoured at the end of that sleep.

A job whose worker died mid-way stays in that worker's folder; the next worker of the same
index does it first. Delivery is therefore at least once: a job whose line was written to
done.txt just before a crash would be done again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
SPOOL = os.environ.get("SPOOL_DIR") or os.path.join(HERE, "spool")
DONE_FILE = os.environ.get("DONE_FILE") or os.path.join(HERE, "done.txt")
IDLE_SLEEP = float(os.environ.get("IDLE_SLEEP", "0.2"))
WORKER = os.environ.get("GSUPER_WORKER", "0")
CLAIM_DIR = os.path.join(SPOOL, f"work-{WORKER}")

log = logging.getLogger("consumer")
os.makedirs(CLAIM_DIR, exist_ok=True)

# Names seen in the spool at the last listing, oldest first: one listing serves many claims.
_candidates: deque[str] = deque()


def _claim() -> str | None:
    """Atomically take one job; return its path in this worker's folder, or None."""
    for name in sorted(os.listdir(CLAIM_DIR)):  # left by a previous life of this worker
        if name.endswith(".job"):
            return os.path.join(CLAIM_DIR, name)
    if not _candidates:
        _candidates.extend(sorted(n for n in os.listdir(SPOOL) if n.endswith(".job") and not n.startswith(".")))
    while _candidates:
        name = _candidates.popleft()
        claimed = os.path.join(CLAIM_DIR, name)
        try:
            os.rename(os.path.join(SPOOL, name), claimed)
        except FileNotFoundError:
            continue  # another worker took it first
        return claimed
    return None


def _process(payload: dict) -> int:
    """The business work of one job: here a square."""
    return int(payload["n"]) ** 2


def handle() -> None:
    """One request: consume one job if there is one."""
    path = _claim()
    if path is None:
        time.sleep(IDLE_SLEEP)
        return
    job_id = os.path.basename(path)[: -len(".job")]
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    result = _process(payload)
    # One short write to a file opened for append: lines of concurrent workers never mix.
    with open(DONE_FILE, "a", encoding="utf-8") as f:
        f.write(f"{job_id} worker={WORKER} result={result}\n")
    os.unlink(path)
    log.info("job %s done: %s", job_id, result)
