"""Starting a worker process and waiting for it, without copying the master.

`os.posix_spawn` (vfork inside glibc) starts `setpriv --pdeathsig TERM -- ARGV`: the master's
memory is never copied, and no Python runs in the child, so a spawn costs the master almost no
CPU (a fork of the master took ~5 ms of CPU, on the same cores the starting workers need).
setpriv (util-linux) sets the parent-death signal and execs the command. A libev child
watcher, the mechanism under gevent's `Popen.wait()`, tells the waiting greenlet of the exit.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable

import gevent
import gevent.event

from gsuper import runners
from gsuper.config import ProgramConfig
from gsuper.logs import PipeReader

SETPRIV = shutil.which("setpriv")
STATUS_LINE_MAX = 65536  # a status report longer than this without a newline is cut
# Dispositions reset in the child: what the master handles, and what Python ignores (SIGPIPE,
# SIGXFSZ), which an exec would otherwise pass on as "ignored".
_RESET = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ,
)  # fmt: skip


#: Pids of the processes :func:`spawn` started that have not exited: the master's own workers.
_LIVE: set[int] = set()


def end_strays(program: str, index: int) -> int:
    """SIGKILL what a slot's earlier processes left behind outside their process group.

    A classic daemon double-forks and calls setsid: it leaves the worker's group and session,
    so the group kill at the worker's exit misses it. The master is a subreaper, so such a
    process arrives as a direct child of the master; it is told from the master's own workers
    (their pids are known) by the environment it inherited (`GSUPER_PROGRAM`, `GSUPER_WORKER`,
    `GSUPER_STATUS_FD`, which hooks do not get). Returns how many were ended.
    """
    children: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as fh:
                children.extend(int(p) for p in fh.read().split())
    except OSError:  # no CONFIG_PROC_CHILDREN: nothing to go on
        return 0
    wanted = {b"GSUPER_PROGRAM": os.fsencode(program), b"GSUPER_WORKER": str(index).encode()}
    ended = 0
    for pid in children:
        if pid in _LIVE:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"GSUPER_STATUS_FD" not in env or any(env.get(k) != v for k, v in wanted.items()):
            continue
        try:
            pgid = os.getpgid(pid)
            if pgid != os.getpgid(0):  # its own group (it called setsid): everything in it
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            ended += 1
        except OSError:
            continue
    return ended


class Child:
    """A spawned process: its pid, and its exit status once it is gone (-N: killed by signal N)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = gevent.event.Event()
        self._watcher = gevent.get_hub().loop.child(pid, False)
        self._watcher.start(self._on_exit)

    def _on_exit(self) -> None:
        status = self._watcher.rstatus
        self._watcher.stop()
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _LIVE.discard(self.pid)
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waiting cooperatively up to `timeout` (None: still running)."""
        self._exited.wait(timeout)
        return self.returncode


def spawn(argv: list[str], env: dict[str, str], cwd: str, output_fd: int, keep_fd: int) -> Child:
    """Start argv in `cwd`, in a new session, stdin from /dev/null, stdout and stderr to
    `output_fd`, with `keep_fd` left open at its number. Raises OSError when it cannot start.

    The master is single-threaded, so changing its working directory around the spawn is safe;
    every path it uses itself is absolute.
    """
    command = [SETPRIV, "--pdeathsig", "TERM", "--", *argv] if SETPRIV else argv
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, output_fd, 1),
        (os.POSIX_SPAWN_DUP2, output_fd, 2),
    ]
    os.set_inheritable(keep_fd, True)
    try:
        previous = os.getcwd()
    except OSError:  # the folder the master was started in is gone
        previous = "/"
    os.chdir(cwd)
    try:
        pid = os.posix_spawnp(command[0], command, env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=_RESET)
    finally:
        os.chdir(previous)
        os.set_inheritable(keep_fd, False)
    _LIVE.add(pid)
    return Child(pid)


class WorkerProcess:
    """A spawned worker: its :class:`Child` and the readers of its output and status pipes."""

    def __init__(self, child: Child, output: PipeReader, status: PipeReader, slot: tuple[str, int] = ("", -1)) -> None:
        self.child = child
        self.slot = slot  # (program, index): whose strays to end
        self.pid = child.pid
        self._output = output
        self._status = status

    @property
    def returncode(self) -> int | None:
        """The exit status once the process is gone (-N: killed by signal N), else None."""
        return self.child.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waiting cooperatively up to `timeout` (None: still running)."""
        return self.child.wait(timeout)

    def drain(self, timeout_s: float) -> None:
        """After the exit: take the runner's last report (its exit reason) from the status pipe.

        What the process wrote is in the pipe already, so it is read at once; waiting for an EOF
        (up to `timeout_s`) would wait in vain while the worker's children hold the pipe.
        """
        self._status.drain_now()

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process group the worker leads. Raises OSError (ESRCH: gone)."""
        os.killpg(self.pid, sig)

    def end_strays(self) -> int:
        """After the exit: end what the worker left outside its group (:func:`end_strays`)."""
        return end_strays(*self.slot)


def launch_worker(
    config: ProgramConfig,
    index: int,
    max_request: int,
    on_output: Callable[[bytes], None],
    on_reports: Callable[[bytes], None],
) -> WorkerProcess:
    """The real spawner of a worker slot: pipes, argv and environment, the process, the readers.

    Raises OSError (with the reason) when the process cannot be started.
    """
    # A daemon an earlier life double-forked may only have arrived since that life's exit.
    end_strays(config.name, index)
    status_r, status_w = os.pipe()
    try:
        out_r, out_w = os.pipe()
    except OSError:  # EMFILE half-way: the first pipe must not leak, or every retry loses two more
        os.close(status_r)
        os.close(status_w)
        raise
    for fd in (status_r, out_r):
        os.set_blocking(fd, False)
    argv = runners.argv_for(config)
    try:
        child = spawn(argv, runners.env_for(config, index, status_w, max_request), config.directory, out_w, status_w)
    except OSError:
        for fd in (status_r, out_r):
            os.close(fd)
        raise
    finally:
        os.close(status_w)
        os.close(out_w)
    output, status = PipeReader(out_r, on_output), PipeReader(status_r, on_reports, STATUS_LINE_MAX)
    return WorkerProcess(child, output, status, (config.name, index))
