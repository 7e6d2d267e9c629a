"""Shared fixtures: every test runs with a unique token in its environment, and fails if any
process carrying that token is still alive when it ends (gsuper masters, workers, their children)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# -- driving the real command line ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = str(ROOT / "bin" / "gsuper")
PHP = shutil.which("php")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Gsuper:
    """A gsuper configuration in a temporary folder, driven through bin/gsuper."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "gsuper.ini"

    def write(self, text: str) -> Path:
        """Write the configuration file (dedented)."""
        self.config.write_text(textwrap.dedent(text))
        return self.config

    def file(self, name: str, text: str, mode: int = 0o644) -> Path:
        """Write a helper file (a worker script) next to the configuration."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        path.chmod(mode)
        return path

    def run(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `bin/gsuper ARGS -c CONFIG` and return the finished process."""
        argv = [sys.executable, BIN, *args]
        if "-c" not in args and args and args[0] == "-s":
            argv += ["-c", str(self.config)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            pytest.fail(f"gsuper {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    @contextlib.contextmanager
    def popen(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """`bin/gsuper ARGS -c CONFIG` running beside the test (text pipes for stdout and
        stderr); however the block ends, the process is killed if still running, and reaped."""
        argv = [sys.executable, BIN, *args]
        if "-c" not in args and args and args[0] == "-s":
            argv += ["-c", str(self.config)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.root)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`-s start`, which must succeed."""
        return self.run("-s", "start", *extra, check=True)

    def status(self, *extra: str) -> dict[str, Any]:
        """`-s status --json`, parsed."""
        proc = self.run("-s", "status", "--json", *extra, check=True)
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def workers(self, program: str | None = None) -> list[dict[str, Any]]:
        """The worker rows of status, optionally of one program."""
        return [w for w in self.status()["workers"] if program is None or w["program"] == program]

    def wait_workers(
        self, program: str, state: str = "RUNNING", count: int | None = None, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Wait until `count` (default: all) workers of the program are in `state`."""

        def ready() -> list[dict[str, Any]] | None:
            rows = self.workers(program)
            match = [w for w in rows if w["state"] == state]
            want = len(rows) if count is None else count
            return match if rows and len(match) == want else None

        return wait_for(ready, timeout, f"{program} workers {state}", 0.05)  # type: ignore[no-any-return]

    def log(self, name: str = "gsuper") -> str:
        """The text of a log file (the master's by default)."""
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pidfile(self) -> str:
        """The pid file path of this configuration (rundir may be set in it)."""
        from gsuper import config

        try:
            return config.load(str(self.config)).pidfile
        except config.ConfigError:
            return str(self.root / "run" / "gsuper.pid")

    def master_pid(self) -> int | None:
        """Pid of the running master, from its pid file."""
        try:
            return int(Path(self.pidfile()).read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        """Whether a master holds the pid file lock."""
        from gsuper.daemon import running_pid

        return bool(running_pid(self.pidfile()))

    def cleanup(self) -> None:
        """Force an exit if a master is still running (the leak check then sees nothing)."""
        if self.config.exists() and self.running():
            self.run("-s", "exit")


@pytest.fixture
def gs(tmp_path: Path) -> Iterator[Gsuper]:
    """A Gsuper in a temporary folder; any master still running at the end is made to exit."""
    g = Gsuper(tmp_path)
    yield g
    g.cleanup()


def kill_group_and_reap(proc: subprocess.Popen[Any]) -> None:
    """End a test's process with its whole group (it leads one) if still running, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def alive(pid: int) -> bool:
    """True while the pid is a live process (not a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server on a free loopback port (no persistence); a redis-py client to it."""
    redis = pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(ping, 10, what="redis-server to listen")
        client.port = port  # for the tests' configs
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """spawn(argv, env, cwd, **options) -> runner_harness.RunnerProcess: a runner started as the
    master starts it (tests of the runners without a master); each one is ended after the test."""
    from runner_harness import RunnerProcess

    started: list[RunnerProcess] = []

    def start(argv: list[str], env: dict[str, Any], cwd: Path, **kw: Any) -> RunnerProcess:
        worker = RunnerProcess(argv, env, cwd, tmp_path, **kw)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
