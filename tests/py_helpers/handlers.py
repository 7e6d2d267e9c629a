"""Handlers for the python runner tests (GSUPER_HANDLER=handlers:NAME)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

calls = 0
_leak: list[bytes] = []


def count() -> None:
    global calls
    calls += 1
    print(f"count {calls} pid {os.getpid()}")


def noop() -> None:
    pass


def slow() -> None:
    """One long request: markers before and after, with the time."""
    print(f"before {time.time():.3f}")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
    print(f"after {time.time():.3f}")


def leak() -> None:
    """Keeps 4 MB more (touched, so resident) on every call."""
    _leak.append(b"x" * (4 << 20))


def flaky() -> None:
    """Fails on every second call."""
    global calls
    calls += 1
    if calls % 2 == 0:
        raise ValueError(f"boom at {calls}")
    print(f"ok {calls}")


def exit_now() -> None:
    sys.exit(5)


def spawn_child() -> None:
    """Tells whether a child of the business code sees the status pipe (fd or variable)."""
    fd = os.environ["CHECK_FD"]
    code = (
        "import os, sys\n"
        "try:\n"
        "    os.fstat(int(sys.argv[1])); is_open = True\n"
        "except OSError:\n"
        "    is_open = False\n"
        "print('child fd open', is_open, 'env', os.environ.get('GSUPER_STATUS_FD'))\n"
    )
    subprocess.run([sys.executable, "-c", code, fd], close_fds=False, check=True)


class Counter:
    """Counts how many instances the runner makes."""

    inits = 0

    def __init__(self) -> None:
        Counter.inits += 1
        self.calls = 0

    def handle(self) -> None:
        self.calls += 1
        print(f"method inits={Counter.inits} calls={self.calls} id={id(self)}")

    @staticmethod
    def static() -> None:
        print(f"static inits={Counter.inits}")

    @classmethod
    def klass(cls) -> None:
        print(f"classmethod {cls.__name__} inits={Counter.inits}")

    def __call__(self) -> None:
        self.calls += 1
        print(f"call inits={Counter.inits} calls={self.calls} id={id(self)}")


def start_thread() -> None:
    """Leaves a non-daemon thread running forever (as some client libraries do)."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), name="forever", daemon=False).start()
    print("thread started")
