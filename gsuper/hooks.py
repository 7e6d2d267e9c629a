"""Event hooks, ``[hook:NAME]``: a command run once per matching event, beside the master.

A hook subscribes to the master's event stream. Its events wait in a queue of at most
:data:`MAX_QUEUE` (past that the oldest are dropped, and the master log counts them); one
greenlet per hook runs them one at a time: ``/bin/sh -c COMMAND`` in the configuration file's
folder, in a session of its own, the event as one JSON line on stdin, ``GSUPER_EVENT``,
``GSUPER_PROGRAM`` and ``GSUPER_WORKER`` in its environment, its output in the master log. A
run that outlasts the hook's ``timeout`` gets SIGKILL to its process group. The subscriber only
appends to a deque, so no hook, however slow, delays a respawn.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import deque
from typing import Any

import gevent
import gevent.event

from gsuper.config import HOOK_EVENTS, HookConfig
from gsuper.events import Event, EventStream
from gsuper.logs import PipeReader
from gsuper.osutil import killpg
from gsuper.spawn import _RESET, SETPRIV, Child

log = logging.getLogger("gsuper")

MAX_QUEUE = 1000
DROP_LOG_INTERVAL_S = 1.0
OUTPUT_LINE_MAX = 2000
STATE_EVENTS = {"RUNNING": "running", "BACKOFF": "backoff", "FATAL": "fatal"}


def hook_event(event: Event) -> str | None:
    """The hook event name of a stream event (None: no hook can ask for it).

    An exit is named by its reason; ``killed`` (a signal gsuper did not send) is a ``crashed``
    hook event, and the JSON keeps ``reason: killed``.
    """
    if event.kind == "started":
        return "started"
    if event.kind == "state":
        return STATE_EVENTS.get(event.state or "")
    if event.kind == "exit":
        reason = "crashed" if event.reason == "killed" else event.reason
        return reason if reason in HOOK_EVENTS else "exited"
    if event.kind in ("scaled", "reloaded"):
        return event.kind
    return None


def payload(name: str, event: Event) -> dict[str, Any]:
    """The JSON object a hook reads on stdin."""
    out: dict[str, Any] = {
        "event": name,
        "program": event.program,
        "worker": event.worker,
        "pid": event.pid,
        "time": event.time,
        "reason": event.reason,
        "code": event.code,
    }
    for key, value in event.data.items():
        out.setdefault(key, value)
    return out


class Hook:
    """One [hook:NAME]: its queue and the greenlet that runs it, one event at a time."""

    def __init__(self, config: HookConfig, max_queue: int = MAX_QUEUE) -> None:
        self.config = config
        self.max_queue = max_queue
        self.queue: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.runs = 0
        self.child: Child | None = None
        self._unlogged_drops = 0
        self._drop_logged_at = 0.0
        self._wake = gevent.event.Event()
        self._closing = False
        self._greenlet = gevent.spawn(self._loop)

    def wants(self, name: str, event: Event) -> bool:
        """Whether this hook asked for this event (its events and programs)."""
        if name not in self.config.events:
            return False
        programs = self.config.programs
        return programs is None or event.program is None or event.program in programs

    def offer(self, item: dict[str, Any]) -> None:
        """Queue an event for the hook (called in the hub: never blocks)."""
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self._unlogged_drops += 1
            now = time.monotonic()
            if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
                self._drop_logged_at = now
                log.warning(
                    "hook %s: %d events waiting; dropped the %d oldest (%d in all)",
                    self.config.name, self.max_queue, self._unlogged_drops, self.dropped,
                )  # fmt: skip
                self._unlogged_drops = 0
        self.queue.append(item)
        self._wake.set()

    def _loop(self) -> None:
        while not self._closing:
            if not self.queue:
                self._wake.clear()
                self._wake.wait()
                continue
            item = self.queue.popleft()
            try:
                self._run(item)
            except Exception:  # noqa: BLE001 - one failed run must not end the hook
                log.exception("hook %s failed on a %s event", self.config.name, item.get("event"))

    def _run(self, item: dict[str, Any]) -> None:
        cfg = self.config
        data = json.dumps(item).encode() + b"\n"
        env = dict(os.environ)
        env.update(
            GSUPER_EVENT=str(item["event"]),
            GSUPER_PROGRAM="" if item["program"] is None else str(item["program"]),
            GSUPER_WORKER="" if item["worker"] is None else str(item["worker"]),
        )
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.set_blocking(out_r, False)
        try:
            # One event is far below a pipe's 64 KiB buffer: written whole before the spawn, so
            # the master never waits on a hook that does not read its stdin.
            try:
                os.write(in_w, data[:60000])
            finally:
                os.close(in_w)
            argv = ["/bin/sh", "-c", cfg.command]
            command = [SETPRIV, "--pdeathsig", "TERM", "--", *argv] if SETPRIV else argv
            actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)]
            try:
                previous = os.getcwd()
            except OSError:
                previous = "/"
            # As for workers (gsuper.spawn): the handler must exist before the child can exit.
            gevent.get_hub().loop.install_sigchld()
            os.chdir(cfg.directory)
            try:
                pid = os.posix_spawnp(
                    command[0], command, env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=_RESET
                )
            finally:
                os.chdir(previous)
        except OSError as exc:
            log.error("hook %s: cannot run %r: %s", cfg.name, cfg.command, exc.strerror)
            _close(out_r)
            return
        finally:
            _close(in_r)
            _close(out_w)
        self.runs += 1
        child = self.child = Child(pid)
        reader = PipeReader(out_r, self._output, OUTPUT_LINE_MAX)
        try:
            code = child.wait(cfg.timeout_s)
            if code is None:
                log.warning("hook %s: still running after %.1fs on a %s event: SIGKILL", cfg.name, cfg.timeout_s, item["event"])
                killpg(pid, signal.SIGKILL)
                code = child.wait()
            elif code != 0:
                log.warning("hook %s exited %d on a %s event", cfg.name, code, item["event"])
            killpg(pid, signal.SIGKILL)  # whatever it left in its group goes with it
            reader.eof.wait(timeout=1.0)
        finally:
            self.child = None
            reader.close()

    def _output(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.info("hook %s: %s", self.config.name, line[:OUTPUT_LINE_MAX])

    def close(self, timeout_s: float = 0.0) -> None:
        """Let queued events run for up to `timeout_s`, then kill a run in progress and stop."""
        deadline = time.monotonic() + timeout_s
        while (self.queue or self.child is not None) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self._closing = True
        self.queue.clear()
        if self.child is not None:
            killpg(self.child.pid, signal.SIGKILL)
            self.child.wait(5)
        self._greenlet.kill(block=False)


class HookRunner:
    """Every [hook:NAME] of the configuration, subscribed to the event stream."""

    def __init__(self, configs: dict[str, HookConfig], events: EventStream) -> None:
        self.hooks: dict[str, Hook] = {name: Hook(cfg) for name, cfg in configs.items()}
        self._unsubscribe = events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        name = hook_event(event)
        if name is None:
            return
        item: dict[str, Any] | None = None
        for hook in self.hooks.values():
            if hook.wants(name, event):
                item = item or payload(name, event)
                hook.offer(item)

    def reconfigure(self, configs: dict[str, HookConfig]) -> None:
        """After a reload: keep unchanged hooks (and their queues), replace the others."""
        for name, hook in list(self.hooks.items()):
            if configs.get(name) != hook.config:
                gevent.spawn(hook.close, hook.config.timeout_s)
                del self.hooks[name]
        for name, cfg in configs.items():
            if name not in self.hooks:
                self.hooks[name] = Hook(cfg)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop listening; give queued events up to `timeout_s` in all, then end the hooks."""
        self._unsubscribe()
        gevent.joinall([gevent.spawn(h.close, timeout_s) for h in self.hooks.values()])


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


