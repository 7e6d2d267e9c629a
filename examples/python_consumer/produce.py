#!/usr/bin/env python3
"""Put N jobs into the spool: `python3 produce.py N`.

Each job is written to a hidden temporary file and then renamed to `*.job`, so consumers only
ever see whole jobs. Names sort in the order of production and are unique across runs.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SPOOL = os.environ.get("SPOOL_DIR") or os.path.join(HERE, "spool")


def produce(count: int) -> list[str]:
    os.makedirs(SPOOL, exist_ok=True)
    stamp, pid = time.time_ns(), os.getpid()
    ids = []
    for n in range(count):
        job_id = f"{stamp:020d}-{pid}-{n:07d}"
        tmp = os.path.join(SPOOL, f".{job_id}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"id": job_id, "n": n}, f)
        os.rename(tmp, os.path.join(SPOOL, f"{job_id}.job"))
        ids.append(job_id)
    return ids


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: produce.py N\n")
        return 2
    produce(int(argv[1]))
    print(f"{argv[1]} jobs queued in {SPOOL}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
