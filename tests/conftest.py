"""Shared fixtures: every test runs with a unique token in its environment, and fails if any
process carrying that token is still alive when it ends (gsuper masters, workers, their children)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

TOKEN_VAR = "GSUPER_TEST_TOKEN"


def processes_with_token(token: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries this test's token."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(TOKEN_VAR) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(autouse=True)
def leak_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tag every process a test starts; afterwards fail the test if any is left, and end them."""
    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VAR, token)
    yield token
    deadline = time.monotonic() + 5.0
    left = processes_with_token(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_with_token(token)
    if left:
        described = []
        for proc in left:
            try:
                described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
                os.kill(proc.pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        pytest.fail("processes left behind by the test: " + "; ".join(described))
