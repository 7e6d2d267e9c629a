"""One harness for the runner tests (PHP, Python, shell): a runner process started as the master
starts it, with its status reports read as they come.

The process gets its own session, an environment from os.environ (conftest tags it for the
leak check) plus GSUPER_PROGRAM / GSUPER_WORKER / GSUPER_STATUS_FD, its stdout and stderr in
files, and the write end of a status pipe that a thread reads as JSON lines.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group_and_reap, wait_for

Event = dict[str, Any]


class RunnerProcess:
    """One runner process, its status events and its output."""

    _serial = itertools.count(1)

    def __init__(
        self,
        argv: list[str],
        env: dict[str, Any],
        cwd: Path,
        out_dir: Path,
        *,
        status: tuple[int, int] | None = None,
        status_pipe: bool = True,
        read_status: bool = True,
        extra_fds: tuple[int, ...] = (),
        log: Path | None = None,
    ) -> None:
        """`status`: a pipe of the test's own (read end, write end); `status_pipe=False`: no
        GSUPER_STATUS_FD at all; `read_status=False`: nobody reads the pipe; `log`: a file the
        test's business code writes to (TEST_LOG)."""
        serial = next(self._serial)
        self.out_path = out_dir / f"worker{serial}.out"
        self.err_path = out_dir / f"worker{serial}.err"
        self.log = log
        self.events: list[Event] = []
        full_env = dict(os.environ)
        full_env.update(PYTHONDONTWRITEBYTECODE="1", GSUPER_PROGRAM="test", GSUPER_WORKER="0")
        self.status_r: int | None = None
        pass_fds = extra_fds
        status_w: int | None = None
        if status_pipe:
            self.status_r, status_w = status if status else os.pipe()
            full_env["GSUPER_STATUS_FD"] = str(status_w)
            pass_fds = (status_w, *extra_fds)
        else:
            full_env.pop("GSUPER_STATUS_FD", None)
        if log is not None:
            full_env["TEST_LOG"] = str(log)
        full_env.update({k: str(v) for k, v in env.items()})
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        if status_w is not None:
            os.close(status_w)  # the child holds the only write end: EOF when it is gone
        self.pid = self.proc.pid
        self.reader: threading.Thread | None = None
        if self.status_r is not None and read_status:
            self.reader = threading.Thread(target=self._read_status, args=(self.status_r,), daemon=True)
            self.reader.start()

    def _read_status(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self.events.extend(json.loads(line) for line in lines if line.strip())

    def read_now(self) -> None:
        """Start reading the status pipe (for a test that left it unread: `read_status=False`)."""
        if self.reader is None and self.status_r is not None:
            self.reader = threading.Thread(target=self._read_status, args=(self.status_r,), daemon=True)
            self.reader.start()

    # What the worker said -------------------------------------------------------------
    def of(self, kind: str) -> list[Event]:
        """The events of one kind so far."""
        return [e for e in list(self.events) if e.get("event") == kind]

    def wait_event(self, kind: str, timeout: float = 10, where: Callable[[Event], bool] = lambda e: True) -> Event:
        """The first event of `kind` (already read or to come) for which `where` holds."""
        return wait_for(lambda: next((e for e in self.of(kind) if where(e)), None), timeout, f"event {kind}")  # type: ignore[no-any-return]

    def exit_event(self) -> Event:
        """The one `exit` event of the process."""
        exits = self.of("exit")
        assert len(exits) == 1, f"{len(exits)} exit events; events: {self.events[-5:]}; stderr: {self.err()}"
        return exits[0]

    def out(self) -> str:
        """What it wrote to stdout so far."""
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        """What it wrote to stderr so far."""
        return self.err_path.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 10) -> str:
        """Stdout, once it holds `text`."""
        return wait_for(lambda: text in self.out() and self.out(), timeout, f"output {text!r}")  # type: ignore[no-any-return]

    # Its life -------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        """As the master does: to the worker's process group."""
        os.killpg(self.pid, sig)

    def wait_exit(self, timeout: float = 10) -> int:
        """Wait for the process to end and its last reports to be read; its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.pid} still running after {timeout}s; stderr: {self.err()}")
        if self.reader is not None:
            self.reader.join(timeout)  # EOF once every holder of the write end is gone
        return code

    def close(self) -> None:
        """Teardown: a worker still running is killed with its group and reaped."""
        kill_group_and_reap(self.proc)
        if self.reader is not None:
            self.reader.join(10)
        elif self.status_r is not None:
            try:
                os.close(self.status_r)
            except OSError:
                pass
