"""Starting a worker process and waiting for it, without copying the master.

`os.posix_spawn` (vfork inside glibc) starts `setpriv --pdeathsig TERM -- ARGV`: the master's
memory is never copied, and no Python runs in the child, so a spawn costs the master almost no
CPU (a fork of the master took ~5 ms of CPU, on the same cores the starting workers need).
setpriv (util-linux) sets the parent-death signal and execs the command. A libev child
watcher, the mechanism under gevent's `Popen.wait()`, tells the waiting greenlet of the exit.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Callable

import gevent
import gevent.event

from gsuper import guard, memsample, runners
from gsuper.config import ProgramConfig
from gsuper.logs import PipeReader
from gsuper.users import User

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
        _LIVE.add(pid)  # ours (spawned, or forked by a warm template): never a stray

    def _on_exit(self) -> None:
        status = self._watcher.rstatus
        self._watcher.stop()
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _LIVE.discard(self.pid)
        memsample.forget(self.pid)  # reaped: its pid may be reused, its /proc descriptors are void
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waiting cooperatively up to `timeout` (None: still running)."""
        self._exited.wait(timeout)
        return self.returncode

    def on_exit(self, callback: Callable[[], object]) -> None:
        """Call `callback()` in the hub once the process is gone (soon, if it is already)."""
        self._exited.rawlink(lambda _event: callback())


def setpriv_argv(argv: list[str], user: User | None = None) -> list[str]:
    """The command line that runs argv through setpriv: parent-death signal, and the user.

    setpriv changes the ids before it sets the parent-death signal, so the kernel (which clears
    that signal when the credentials change) keeps it. Raises OSError when a user is asked for
    but setpriv is missing: running the worker as root instead would be worse than not at all.
    """
    # `user` naming the master's own user (allowed without root) changes nothing: no setpriv ids,
    # which would need root for --init-groups.
    other = user is not None and user.uid != os.geteuid()
    if SETPRIV is None:
        if other:
            raise OSError(errno.ENOENT, "setpriv (util-linux) is needed to run a worker as another user")
        return argv
    ids = ["--reuid", str(user.uid), "--regid", str(user.gid), "--init-groups"] if other and user else []
    return [SETPRIV, *ids, "--pdeathsig", "TERM", "--", *argv]


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    output_fd: int,
    keep_fds: tuple[int, ...],
    user: User | None = None,
    error_fd: int | None = None,
) -> Child:
    """Start argv in `cwd`, in a new session, stdin from /dev/null, stdout to `output_fd` and
    stderr to `error_fd` (default: `output_fd` too), with each of `keep_fds` left open at its
    number (the status pipe, the busy page), as `user` when given. Raises OSError when it
    cannot start.

    The master is single-threaded, so changing its working directory around the spawn is safe;
    every path it uses itself is absolute.
    """
    # gevent installs libev's SIGCHLD handler only when the first child watcher is made: a first
    # child that exited before that (a crash loop's very first start, on a loaded machine) was
    # never reaped nor seen. Installed before any spawn, every exit reaches its watcher.
    gevent.get_hub().loop.install_sigchld()
    command = setpriv_argv(argv, user)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, output_fd, 1),
        (os.POSIX_SPAWN_DUP2, output_fd if error_fd is None else error_fd, 2),
    ]
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    try:
        previous = os.getcwd()
    except OSError:  # the folder the master was started in is gone
        previous = "/"
    os.chdir(cwd)
    try:
        pid = os.posix_spawnp(command[0], command, env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=_RESET)
    finally:
        os.chdir(previous)
        for fd in keep_fds:
            os.set_inheritable(fd, False)
    return Child(pid)


class WorkerProcess:
    """A spawned worker: its :class:`Child`, the readers of its output and status pipes, and
    its busy page with this life's lifetime (gsuper.guard)."""

    def __init__(
        self,
        child: Child,
        output: PipeReader,
        status: PipeReader,
        errors: PipeReader | None = None,
        page: guard.BusyPage | None = None,
        lifetime_s: float = 0.0,
        spawned_ns: int = 0,
        slot: tuple[str, int] = ("", -1),
    ) -> None:
        self.child = child
        self.slot = slot  # (program, index): whose strays to end
        self.pid = child.pid
        self._output = output
        self._status = status
        self._errors = errors  # stderr's own reader, with stderr_logfile
        self._page = page
        self.lifetime_s = lifetime_s  # max_lifetime with its jitter drawn, 0: unlimited
        self._spawned_ns = spawned_ns

    def busy(self, now_ns: int) -> guard.Busy | None:
        """The request the worker stamped on its busy page, or None (idle, or no page)."""
        if self._page is None:
            return None
        return guard.sane(self._page.read(), self._spawned_ns, now_ns)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process is gone (-N: killed by signal N), else None."""
        return self.child.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waiting cooperatively up to `timeout` (None: still running)."""
        return self.child.wait(timeout)

    def on_exit(self, callback: Callable[[], object]) -> None:
        """Call `callback()` in the hub once the process is gone (the slot parks on it)."""
        self.child.on_exit(callback)

    def drain(self, timeout_s: float) -> None:
        """After the exit: take the runner's last report (its exit reason) from the status pipe.

        What the process wrote is in the pipe already, so it is read at once; waiting for an EOF
        (up to `timeout_s`) would wait in vain while the worker's children hold the pipe.
        """
        self._status.drain_now()
        if self._page is not None:  # the busy page is no longer needed
            self._page.close()
            self._page = None

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process group the worker leads. Raises OSError (ESRCH: gone)."""
        os.killpg(self.pid, sig)

    def end_strays(self) -> int:
        """After the exit: end what the worker left outside its group (:func:`end_strays`)."""
        return end_strays(*self.slot)


class Plumbing:
    """One life's pipes (status, output, stderr when apart) and busy page, made before its
    process and its lifetime drawn: :meth:`process` hands them to the process that got the
    write ends, :meth:`abandon` closes them when none did. Shared by cold spawns and warm forks.
    Raises OSError (EMFILE half-way: nothing made so far is left open, or every retry loses more).
    """

    def __init__(self, config: ProgramConfig, separate_errors: bool) -> None:
        self.lifetime_s = guard.draw_lifetime(config)  # max_lifetime plus its jitter, 0: unlimited
        self.spawned_ns = time.monotonic_ns()
        enforced = self.lifetime_s and guard.runner_enforces_lifetime(config)
        # A php or python loop gets its deadline in the environment, as it must know it from its start.
        self.deadline_ns = self.spawned_ns + int(self.lifetime_s * 1e9) if enforced else 0
        self.page: guard.BusyPage | None = None
        self.err_r: int | None = None
        self.err_w: int | None = None
        opened: list[int] = []
        try:
            self.page = guard.BusyPage() if guard.has_busy_page(config) else None
            self.status_r, self.status_w = os.pipe()
            opened += (self.status_r, self.status_w)
            self.out_r, self.out_w = os.pipe()
            opened += (self.out_r, self.out_w)
            if separate_errors:
                self.err_r, self.err_w = os.pipe()
                opened += (self.err_r, self.err_w)
        except OSError:
            for fd in opened:
                os.close(fd)
            if self.page is not None:
                self.page.close()
            raise
        self.readers = [fd for fd in (self.status_r, self.out_r, self.err_r) if fd is not None]

    @property
    def busy_fd(self) -> int | None:
        """The busy page's descriptor for the process, if it gets one."""
        return self.page.fd if self.page is not None else None

    def close_write_ends(self) -> None:
        """Once the process has them (or could not start): the master keeps only the read ends."""
        for fd in (self.status_w, self.out_w, self.err_w):
            if fd is not None:
                os.close(fd)

    def abandon(self) -> None:
        """No process got them: close the read ends and the page."""
        for fd in self.readers:
            os.close(fd)
        if self.page is not None:
            self.page.close()

    def process(
        self,
        child: Child,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None,
        slot: tuple[str, int],
    ) -> WorkerProcess:
        """The :class:`WorkerProcess` of `child`, which holds the write ends and the page now."""
        if self.page is not None:
            self.page.close_fd()  # the worker has its own; the mapping stays
        for fd in self.readers:
            os.set_blocking(fd, False)
        errors = PipeReader(self.err_r, on_errors) if self.err_r is not None and on_errors is not None else None
        output, status = PipeReader(self.out_r, on_output), PipeReader(self.status_r, on_reports, STATUS_LINE_MAX)
        return WorkerProcess(child, output, status, errors, self.page, self.lifetime_s, self.spawned_ns, slot)


def launch_worker(
    config: ProgramConfig,
    index: int,
    max_request: int,
    on_output: Callable[[bytes], None],
    on_reports: Callable[[bytes], None],
    on_errors: Callable[[bytes], None] | None = None,
) -> WorkerProcess:
    """The real spawner of a worker slot: pipes, argv and environment, the process, the readers.

    With `on_errors`, stderr gets a pipe of its own; else it shares stdout's (one ordered
    stream). The worker runs in its own `directory` (expanded), as the program's `user`.
    Raises OSError (with the reason) when the process cannot be started. The lifetime of this
    life (max_lifetime plus its jitter) is drawn here: a php or python loop gets its deadline in
    the environment, as it must know it from its start.
    """
    settings = runners.settings(config, index)
    # `check` saw every folder below numprocs; one that differs per worker may be missing above it.
    if config.per_worker and not os.path.isdir(settings.directory):
        raise OSError(errno.ENOENT, f"no such folder {settings.directory}")
    # A daemon an earlier life double-forked may only have arrived since that life's exit.
    end_strays(config.name, index)
    pipes = Plumbing(config, on_errors is not None)
    argv = runners.argv_for(config, index)
    env = runners.env_for(config, index, pipes.status_w, max_request, pipes.busy_fd, pipes.deadline_ns)
    keep = (pipes.status_w,) if pipes.busy_fd is None else (pipes.status_w, pipes.busy_fd)
    try:
        child = spawn(argv, env, settings.directory, pipes.out_w, keep, config.user, pipes.err_w)
    except OSError:
        pipes.abandon()
        raise
    finally:
        pipes.close_write_ends()
    return pipes.process(child, on_output, on_reports, on_errors, (config.name, index))
