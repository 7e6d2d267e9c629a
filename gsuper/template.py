"""Warm workers: the fork-server side of a program's template process (`warm = true`).

The template is `runners/php/worker.php` in template mode: it loads the bootstrap once, serves
no request, and forks a *spare* worker whenever :meth:`Template.refill` (or a spawn that finds
none) asks. The master and the template talk over a SOCK_SEQPACKET socketpair (one packet per
message):

- template → master: ``{"event": "ready"}`` once the bootstrap is loaded, or the runner's
  ``{"event": "exit", "reason": "bootstrap", ...}`` when it cannot be;
- master → template: ``{"spare": true, "id": N}`` with one end of a fresh socketpair attached
  (SCM_RIGHTS): the spare's own line to the master;
- an intermediate child of the template → master: ``{"event": "forked", "id": N, "pid": P}``;
  the master starts its child watcher on P and acknowledges with one byte; the intermediate then
  exits, so the spare is orphaned to the master (a subreaper), which reaps it like a spawned worker;
- master → spare, at a spawn (the *go*): ``{"worker", "ino", "env", "directory"}`` (``ino``:
  each descriptor's ``"device:inode"``) with the
  worker's output, status and stderr pipes and its busy page attached; the spare becomes the
  slot's worker, and the next spare is forked in the background.

:class:`WarmSpawner` is the spawner of every program's slots: a warm program's workers are
forked through its template, built (again) when missing, stale or dead; when the template
cannot be built, the program runs cold (:func:`gsuper.spawn.launch_worker`) and says why.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import gevent.socket

from gsuper import runners
from gsuper.config import ProgramConfig
from gsuper.logs import LogFile, PipeReader, timestamp
from gsuper.osutil import killpg
from gsuper.record import Entry
from gsuper.spawn import Child, Plumbing, WorkerProcess, end_strays, launch_worker, spawn
from gsuper.worker import REAL_CLOCK

if TYPE_CHECKING:
    from gsuper.worker import Clock, Process, Spawner

log = logging.getLogger("gsuper")

BUILD_TIMEOUT_S = 60.0  # a bootstrap slower than this is a failed build
FORK_TIMEOUT_S = 5.0  # a fork request unanswered this long: the template is broken
STOP_TIMEOUT_S = 5.0  # TERM to the template's group, then SIGKILL
BACKOFF_START_S, BACKOFF_MAX_S = 0.1, 10.0  # rebuilds of a template that died young
UP_LONG_ENOUGH_S = 1.0  # a template (or spare) that lived this long died "late": replaced at once
REFILL_DELAY_S = 0.05  # after a go, the next spare is forked this much later (CPU for the new worker)


class TemplateError(Exception):
    """The template could not be built or did not answer; the text says why, in one sentence."""


def template_log(logfile: LogFile) -> Callable[[bytes], None]:
    """The template's own stdout and stderr, into the program's log, tagged [template]."""

    def write(data: bytes) -> None:
        prefix = timestamp() + b" [template] "
        logfile.write(prefix + data[:-1].replace(b"\n", b"\n" + prefix) + b"\n")

    return write


def _file_id(fd: int) -> str:
    """"device:inode" of what `fd` refers to: how the spare finds each received descriptor (an
    inode number alone is shared by files of different file systems: a memfd and a socket)."""
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


class Spare:
    """A worker forked in advance: the master's child already, in its own session, idle on its
    own socket until :meth:`Template._go` hands it a slot (or the socket closes: it exits)."""

    def __init__(self, child: Child, sock: socket.socket) -> None:
        self.child = child
        self.sock = sock
        self.born = gevent.get_hub().loop.now()
        self.taken = False  # handed a slot: a worker now, no longer the template's

    def close(self) -> None:
        """End an idle spare: close its socket (it exits) and SIGKILL its group to be sure."""
        self.sock.close()
        if not self.taken and self.child.returncode is None:
            killpg(self.child.pid, signal.SIGKILL)


class Template:
    """One running template process of a program, its socket, and its one spare worker."""

    def __init__(
        self, config: ProgramConfig, output: Callable[[bytes], None], on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.config = config
        self.output = output  # where the template's own stdout and stderr go
        self.on_change = on_change  # a spare came or went (the takeover record lists it)
        self.child: Child | None = None
        self.started_at = 0.0
        self.closing = False
        self._sock: gevent.socket.socket | None = None
        self._ready = gevent.event.Event()
        self._failure: str | None = None
        self._replies: gevent.queue.Queue[dict[str, Any] | None] = gevent.queue.Queue()
        self._lock = gevent.lock.Semaphore()
        self._output: PipeReader | None = None
        self._spare: Spare | None = None  # the next worker, forked in advance
        self._seq = 0  # spare requests sent (a reply names the one it answers)
        self.env: dict[str, str] = {}  # the template's environment (a go sends what differs)

    @property
    def pid(self) -> int | None:
        """The template's pid while it runs."""
        return self.child.pid if self.child is not None and self.child.returncode is None else None

    @property
    def alive(self) -> bool:
        """True while the template runs and is not being closed."""
        return self.pid is not None and not self.closing

    def build(self, timeout_s: float = BUILD_TIMEOUT_S) -> None:
        """Start the template and wait until its bootstrap is loaded; raise TemplateError (why)."""
        ours, theirs = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        out_r, out_w = os.pipe()
        os.set_blocking(out_r, False)
        fd = theirs.fileno()
        env = runners.env_for(self.config, 0, fd, 0)
        env.update(GSUPER_WORKER="template", GSUPER_TEMPLATE_FD=str(fd))
        self.env = env
        try:
            directory = runners.settings(self.config, 0).directory
            self.child = spawn(runners.argv_for(self.config), env, directory, out_w, (fd,), self.config.user)
        except OSError as exc:
            ours.close()
            os.close(out_r)
            raise TemplateError(f"cannot start the template: {exc.strerror or exc}") from None
        finally:
            theirs.close()
            os.close(out_w)
        self.started_at = gevent.get_hub().loop.now()
        self._sock = ours
        self._output = PipeReader(out_r, self.output)
        gevent.spawn(self._read)
        gevent.wait([self._ready, self.child._exited], timeout=timeout_s, count=1)
        if not self._ready.is_set():
            why = self._failure or (
                f"the template exited with code {self.child.returncode}"
                if self.child.returncode is not None
                else f"the template was not ready within {timeout_s:.0f}s"
            )
            self.close(0.5)
            raise TemplateError(why)

    def _read(self) -> None:
        """The template's packets: its ready report, its failure, and the forked pids."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                packet = sock.recv(65536)
            except OSError:
                packet = b""
            if not packet:
                break
            for line in packet.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.get("event") if isinstance(event, dict) else None
                if kind == "ready":
                    self._ready.set()
                elif kind == "exit":
                    if event.get("reason") == "bootstrap":
                        self._failure = "bootstrap failed: " + str(event.get("message", "see the program's log"))[:300]
                elif kind in ("forked", "fork_failed"):
                    self._replies.put(event)
        self._replies.put(None)

    def _fork_spare(self) -> Spare:
        """Ask the template for one spare worker (call under `_lock`). Raises TemplateError."""
        sock = self._sock
        if sock is None or not self.alive:
            raise TemplateError("the template is not running")
        self._seq += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            socket.send_fds(sock, [json.dumps({"spare": True, "id": self._seq}).encode()], [theirs.fileno()])
            reply = self._reply(self._seq)
        except (OSError, gevent.queue.Empty) as exc:
            reply = {"event": "fork_failed", "message": getattr(exc, "strerror", None) or "no answer"}
        finally:
            theirs.close()
        pid = reply.get("pid") if reply else None
        if not isinstance(pid, int) or pid <= 0:
            ours.close()
            message = (reply or {}).get("message", "the template is gone")
            raise TemplateError(f"the template could not fork a worker ({message})")
        # Watch first, then let the intermediate exit: the spare becomes our child only then.
        spare = Spare(Child(pid), ours)
        try:
            sock.send(b"k")
        except OSError:
            pass
        spare.child._exited.rawlink(lambda _event: self._spare_died(spare))
        return spare

    def _reply(self, seq: int) -> dict[str, Any] | None:
        """The template's reply to request `seq`; a late reply to an earlier one (that timed out)
        is acknowledged, so its intermediate exits and the template goes on (that spare's socket
        is closed: it exits too). Raises gevent.queue.Empty after FORK_TIMEOUT_S."""
        deadline = gevent.get_hub().loop.now() + FORK_TIMEOUT_S
        while True:
            reply: dict[str, Any] | None = self._replies.get(timeout=max(0.0, deadline - gevent.get_hub().loop.now()))
            if reply is None or reply.get("id") in (seq, None):
                return reply
            if reply.get("event") == "forked" and self._sock is not None:
                try:
                    self._sock.send(b"k")
                except OSError:
                    pass

    def _spare_died(self, spare: Spare) -> None:
        """A spare that died idle is dropped and replaced (at most one a second: no fork loop)."""
        if spare.taken:
            return  # it was a worker by then: its slot saw the exit
        spare.sock.close()
        if self._spare is spare:
            self._spare = None
            self.on_change()
            if self.alive:
                lived = gevent.get_hub().loop.now() - spare.born
                gevent.spawn_later(max(0.0, UP_LONG_ENOUGH_S - lived), self.refill)

    def take_spare(self) -> Spare:
        """The idle spare, or (none ready) a new one forked now. Raises TemplateError."""
        with self._lock:
            spare, self._spare = self._spare, None
            if spare is None or spare.child.returncode is not None:
                spare = self._fork_spare()
            return spare

    def refill(self) -> None:
        """Fork the next spare in advance, if none is waiting (errors: the next spawn forks)."""
        with self._lock:
            if self._spare is not None or not self.alive:
                return
            try:
                spare = self._fork_spare()
            except TemplateError as exc:
                log.debug("%s: no spare worker (%s)", self.config.name, exc)
                return
            if self.alive:
                self._spare = spare
                self.on_change()
            else:  # closed while it was forked
                spare.close()

    def fork(
        self,
        config: ProgramConfig,
        index: int,
        max_request: int,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None = None,
    ) -> WorkerProcess:
        """Hand slot `index` to a spare worker (forked now if none waits), then fork the next
        spare in the background. Raises TemplateError; OSError for a missing folder or when the
        master is out of descriptors (the slot handles both as for a cold spawn)."""
        settings = runners.settings(config, index)
        if config.per_worker and not os.path.isdir(settings.directory):
            raise OSError(errno.ENOENT, f"no such folder {settings.directory}")
        end_strays(config.name, index)  # as launch_worker: what an earlier life left may arrive late
        try:
            for attempt in (1, 2):
                spare = self.take_spare()
                try:
                    return self._go(spare, config, index, max_request, on_output, on_reports, on_errors)
                except OSError as exc:
                    spare.close()
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        raise  # the master is out of descriptors: the slot retries, as for a cold spawn
                    # Else the spare died just before its go: one more, fresh.
                    if attempt == 2:
                        raise TemplateError(f"the spare worker is gone ({exc.strerror or exc})") from None
            raise AssertionError("not reached")
        finally:
            # Later, not now: the new worker's first request needs the CPU more than the fork.
            gevent.spawn_later(REFILL_DELAY_S, self.refill)

    def _go(
        self,
        spare: Spare,
        config: ProgramConfig,
        index: int,
        max_request: int,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None,
    ) -> WorkerProcess:
        """Send the spare its slot: its pipes and busy page (SCM_RIGHTS), its environment."""
        pipes = Plumbing(config, on_errors is not None)
        send = {"output": pipes.out_w, "status": pipes.status_w}
        if pipes.err_w is not None:
            send["errors"] = pipes.err_w
        if pipes.busy_fd is not None:
            send["busy"] = pipes.busy_fd
        env = runners.env_for(config, index, 0, max_request, None, pipes.deadline_ns)
        # Only what differs from the template's own environment (None: unset it); the status
        # and busy descriptors get their numbers in the worker.
        changed: dict[str, str | None] = {k: v for k, v in env.items() if self.env.get(k) != v}
        changed.update({k: None for k in self.env if k not in env})
        for key in ("GSUPER_STATUS_FD", "GSUPER_BUSY_FD"):
            changed.pop(key, None)
        go = {
            "worker": index,
            "ino": {name: _file_id(fd) for name, fd in send.items()},
            "env": changed,
            "directory": runners.settings(config, index).directory,
        }
        try:
            socket.send_fds(spare.sock, [json.dumps(go).encode()], list(send.values()))
        except OSError:
            pipes.abandon()
            raise
        finally:
            pipes.close_write_ends()
        spare.taken = True
        spare.sock.close()
        return pipes.process(spare.child, on_output, on_reports, on_errors, (config.name, index))

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the template: TERM to its group, SIGKILL after the timeout. Workers it forked
        are the master's children in their own groups: they go on."""
        self.closing = True
        self._close_spare()
        if self._sock is not None:
            self._sock.close()
        child = self.child
        if child is None or child.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not killpg(child.pid, sig):
                return
            if child.wait(timeout_s) is not None:
                return

    def _close_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    @property
    def spare_pid(self) -> int | None:
        """The idle spare's pid, if one waits (its own process group)."""
        spare = self._spare
        return spare.child.pid if spare is not None and spare.child.returncode is None else None

    def kill(self) -> None:
        """SIGKILL the template's group and its spare at once (forced exit)."""
        self.closing = True
        self._close_spare()
        if self.child is not None and self.child.returncode is None:
            killpg(self.child.pid, signal.SIGKILL)


class WarmSpawner:
    """The spawner of a program's slots: through the template when `warm`, else cold."""

    def __init__(
        self,
        name: str,
        output: Callable[[bytes], None],
        cold: Spawner = launch_worker,
        on_change: Callable[[], None] = lambda: None,
        make_template: Callable[..., Template] = Template,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.output = output  # the template's own output
        self.cold = cold  # the spawner of a program that is not warm, or runs cold
        self.on_change = on_change  # the template's processes changed (the takeover record)
        self.make_template = make_template  # (config, output, on_change) -> Template; a fake in the fast tier
        self.clock: Clock = clock or REAL_CLOCK
        self.template: Template | None = None
        self.reason: str | None = None  # why the program runs cold although warm
        self._cold_config: ProgramConfig | None = None  # the config that reason is about
        self._stale = False
        self._failures = 0
        self._lock = gevent.lock.Semaphore()

    def __call__(
        self,
        config: ProgramConfig,
        index: int,
        max_request: int,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None = None,
    ) -> Process:
        """Spawn one worker: forked from the template when warm, else (or on failure) cold."""
        template = self._ensure(config) if config.warm else None
        if template is not None:
            try:
                return template.fork(config, index, max_request, on_output, on_reports, on_errors)
            except TemplateError as exc:
                log.warning("%s#%d: %s; starting it cold", self.name, index, exc)
                self._discard(template)
        if on_errors is None:
            return self.cold(config, index, max_request, on_output, on_reports)
        return self.cold(config, index, max_request, on_output, on_reports, on_errors=on_errors)

    def _ensure(self, config: ProgramConfig) -> Template | None:
        """The live template for `config`, built if missing, stale, dead or for another config;
        None when the program runs cold (the build failed for this config)."""
        with self._lock:
            current = self.template
            same = current is not None and (current.config is config or current.config.same_except_numprocs(config))
            if current is not None and current.alive and not self._stale and same:
                return current
            if self.reason is not None and not self._stale and self._cold_config == config:
                return None
            self.template, self._stale = None, False
            if current is not None:
                gevent.spawn(current.close)
            if self._failures:
                self.clock.wait(gevent.event.Event(), min(BACKOFF_START_S * 2 ** (self._failures - 1), BACKOFF_MAX_S))
            fresh = self.make_template(config, self.output, self.on_change)
            try:
                fresh.build()
            except TemplateError as exc:
                self.reason, self._cold_config = str(exc), config
                log.warning("%s: the template could not be built (%s), so its workers start cold", self.name, exc)
                return None
            self.template, self.reason, self._cold_config = fresh, None, None
            fresh.started_at = self.clock.now()  # its lifetime, for the backoff, on our clock
            self.on_change()
            log.info("%s: template %d ready (bootstrap loaded once; workers are forked from it)", self.name, fresh.pid)
            gevent.spawn(self._watch, fresh)
            return fresh

    def _watch(self, template: Template) -> None:
        """A template that dies by itself is rebuilt, with backoff when it died young."""
        assert template.child is not None
        code = template.child.wait()
        if template.closing or template is not self.template:
            return
        lived = self.clock.now() - template.started_at
        self._failures = 0 if lived >= UP_LONG_ENOUGH_S else self._failures + 1
        log.warning("%s: template %d died (exit %s); rebuilding it", self.name, template.child.pid, code)
        self._discard(template)
        self._ensure(template.config)

    def _discard(self, template: Template) -> None:
        if self.template is template:
            self.template = None
        gevent.spawn(template.close)

    def renew(self) -> None:
        """The next spawn builds a new template from the current code (reload, rolling restart)."""
        self._stale = True
        self.reason = None

    def close(self) -> None:
        """Stop the template (the program stopped); the next start builds a new one."""
        template, self.template = self.template, None
        self.reason, self._stale, self._failures = None, False, 0
        if template is not None:
            template.close()

    def kill(self) -> None:
        """SIGKILL the template's group (forced exit)."""
        if self.template is not None:
            self.template.kill()

    def record_entries(self) -> list[Entry]:
        """The template's process group and its spare's, for the takeover record."""
        template = self.template
        if template is None:
            return []
        return [Entry(pid, STOP_TIMEOUT_S) for pid in (template.pid, template.spare_pid) if pid is not None]

    def describe(self, config: ProgramConfig) -> dict[str, Any]:
        """What status shows of a warm program: `warm` (bool) and, when cold, `warm_error`."""
        if not config.warm:
            return {}
        template = self.template
        warm = template is not None and template.alive
        return {
            "warm": warm,
            "warm_error": None if warm else self.reason,
            "template_pid": template.pid if warm and template is not None else None,
        }
