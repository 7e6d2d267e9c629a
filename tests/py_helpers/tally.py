"""A tiny handler for the batch tests (GSUPER_HANDLER=tally:tick): counts its calls and prints
the count when the process exits, so a test can compare it with the runner's own count."""

from __future__ import annotations

import atexit

calls = 0


def tick() -> None:
    global calls
    calls += 1


atexit.register(lambda: print(f"tally {calls}", flush=True))
