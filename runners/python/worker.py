"""gsuper's Python runner: the in-process request loop of a `runner = python` program.

The master starts it as `python3 /abs/runners/python/worker.py` in the program's directory and
passes everything in the environment:

    GSUPER_PROGRAM, GSUPER_WORKER   program name, worker index (from 0)
    GSUPER_STATUS_FD    write end of the status pipe to the master (absent or empty: no reports)
    GSUPER_MODE         loop (default): the business code once per request;
                        daemon: once, the process exits with its status
    GSUPER_SCRIPT       absolute path of the business script, or empty
    GSUPER_HANDLER      instead of a script: package.module:callable (callable may be a dotted
                        path such as Class.method)
    GSUPER_BOOTSTRAP    newline-separated hooks, loaded once before the first request: a file
                        (run, its names visible to the script) or a module name (imported)
    GSUPER_MAX_REQUEST  requests per life, 0 = unlimited
    GSUPER_MEMORY_LIMIT RSS in bytes over which the worker exits between requests, 0 = none
    GSUPER_USLEEP       microseconds slept after every request (CPU guard)
    GSUPER_ON_ERROR     continue (default) or exit, on an exception in a request
    GSUPER_BUSY_FD      the busy page (docs/runners.md): "busy since" stamp at the start of a
                        request, 0 at its end; the master ends a request over request_timeout
    GSUPER_DEADLINE_NS  CLOCK_MONOTONIC ns after which the worker ends its life between
                        requests (max_lifetime); absent or 0: none

Status reports are JSON lines on the status pipe (see docs: runner protocol):

    {"event": "ready", "pid": PID}
    {"event": "request", "requests": N, "memory": RSS_BYTES, "ms": FLOAT}   at most every 50 ms
    {"event": "error", "requests": N, "message": "..."}
    {"event": "exit", "reason": R, "requests": N}    R: max_request, memory_limit, stopped,
                                                     max_lifetime, error, bootstrap, done

Exit codes: 0 recycle or stop; 70 an exception with on_error = exit (or in daemon mode);
78 bootstrap failure (a hook raised, the script or handler cannot be found or loaded); in
daemon mode, or when the business code raises SystemExit, that code.

Standard library only: it runs under whatever python3 the user has.
"""

from __future__ import annotations

import importlib
import json
import mmap
import os
import runpy
import select
import signal
import struct
import sys
import time
import traceback
from types import FunctionType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: no import cost at start
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

EX_SOFTWARE = 70  # an exception in a request, on_error = exit
EX_CONFIG = 78  # bootstrap failed, script or handler not found

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
REPORT_INTERVAL = 0.05  # seconds between two request reports at most (rate limit)
FINAL_REPORT_WAIT = 1.0  # seconds the last reports before exit may wait for a full pipe
MAX_MESSAGE = 500  # characters of an error message in a report (a line stays < PIPE_BUF)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# With usleep = 0, tiny requests run in batches that last about this long (at the pace measured
# so far): the stop flag, memory, lifetime and reports are checked between batches, not after
# each request (each check costs several times a tiny request). A request longer than this is
# a batch of its own. A batch grows at most 2x per step and holds at most MAX_BATCH requests.
CHECK_EVERY = 0.0001
MAX_BATCH = 1024
BUSY_FORMAT = "=qq"  # the busy page: busy-since stamp (CLOCK_MONOTONIC ns, 0 = idle), request

# Names runpy puts in a hook's namespace that must not reach the script's globals.
_RUNPY_NAMES = frozenset(
    {"__name__", "__file__", "__cached__", "__doc__", "__loader__", "__package__", "__spec__", "__builtins__"}
)


class Stop(BaseException):
    """Raised by the stop signals where no request is in progress (bootstrap, daemon mode)."""


class BootstrapError(Exception):
    """The program cannot start: a hook failed, or the script or handler cannot be loaded."""

    def __init__(self, message: str, show_trace: bool = False) -> None:
        super().__init__(message)
        self.show_trace = show_trace


class Reporter:
    """Writes JSON lines to the status pipe, never blocking a request: a full pipe drops them."""

    def __init__(self, fd_text: str) -> None:
        self.fd: int | None = None
        self.last_request = 0.0  # monotonic time of the last request report sent
        self.pending: dict[str, Any] | None = None  # a request report held back by the rate limit
        self.stalled = False  # a final report already waited in vain: the master is not reading
        if not fd_text.strip():
            return
        try:
            fd = int(fd_text)
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)  # close-on-exec: not for the business code's children
        except (ValueError, OSError) as exc:
            log(f"GSUPER_STATUS_FD={fd_text!r} is not usable ({exc}); no status reports")
            return
        self.fd = fd

    def send(self, event: dict[str, Any], wait: float = 0.0) -> bool:
        """Write one line; with `wait`, a full pipe is waited on for that long (exit only)."""
        if self.fd is None:
            return False
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        deadline = time.monotonic() + wait
        while True:
            try:
                os.write(self.fd, data)  # <= PIPE_BUF bytes: written whole or not at all
                return True
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or self.stalled:
                    self.stalled = self.stalled or wait > 0
                    return False  # the master is slow: drop the report rather than stall
                select.select([], [self.fd], [], left)
            except InterruptedError:
                continue
            except OSError:  # EPIPE (the master is gone), EBADF (the code closed it)
                self.fd = None
                return False

    def request(self, requests: int, ms: float, memory: Memory, now: float) -> None:
        """Report a finished request, at most once per REPORT_INTERVAL."""
        if self.fd is None:
            return
        if now - self.last_request >= REPORT_INTERVAL:
            self.pending = None
            self.last_request = now
            self.send({"event": "request", "requests": requests, "memory": memory.rss(), "ms": round(ms, 3)})
        else:
            self.pending = {"event": "request", "requests": requests, "ms": round(ms, 3)}

    def flush(self, memory: Memory) -> None:
        """Send the request report held back by the rate limit, if any (before an exit)."""
        if self.pending is not None and self.fd is not None:
            event, self.pending = self.pending, None
            event["memory"] = memory.rss()
            self.send(event, wait=FINAL_REPORT_WAIT)


class BusyPage:
    """The worker's busy page (GSUPER_BUSY_FD): tells the master when a request began."""

    def __init__(self, fd_text: str) -> None:
        self.map: mmap.mmap | None = None
        if not fd_text.strip():
            return
        try:
            fd = int(fd_text)
            try:
                self.map = mmap.mmap(fd, 16, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)  # the mapping stays; the business code's children do not get it
        except (ValueError, OSError) as exc:
            log(f"GSUPER_BUSY_FD={fd_text!r} is not usable ({exc}); request_timeout cannot be enforced")

    def begin(self, request: int) -> None:
        if self.map is not None:
            struct.pack_into(BUSY_FORMAT, self.map, 0, time.monotonic_ns(), request)

    def idle(self) -> None:
        if self.map is not None:
            struct.pack_into("=q", self.map, 0, 0)


class Memory:
    """Reads this process's resident memory (RSS) from /proc/self/statm, cheaply."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def rss(self) -> int:
        if self.fd is None:
            return 0
        try:
            if os.getpid() != self.pid:  # the business code forked and the child went on
                os.close(self.fd)
                self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
                self.pid = os.getpid()
            return int(os.pread(self.fd, 128, 0).split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0


def log(message: str) -> None:
    sys.stderr.write(f"gsuper: {TITLE}: {message}\n")
    sys.stderr.flush()


def env_int(name: str, default: int = 0) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BootstrapError(f"{name}={text!r} is not an integer") from None
    if value < 0:
        raise BootstrapError(f"{name}={text!r} must not be negative")
    return value


# Frames of these files (this runner, runpy, importlib) are not the user's: left out of traces.
_OWN_FILES = frozenset({__file__, os.path.abspath(__file__), runpy.__file__, importlib.__file__})


def user_trace(exc: BaseException) -> str:
    """The traceback of an exception without the runner's own frames on top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename not in _OWN_FILES and not filename.startswith("<frozen "):
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def import_module(name: str, what: str, failed: str) -> Any:
    """Import a bootstrap or handler module; a missing module or an error in it is a BootstrapError."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise BootstrapError(f"{what} {name!r} not found (sys.path[0] is {sys.path[0]})") from None
        raise BootstrapError(f"{what} {name} {failed}: {describe(exc)}", show_trace=True) from exc
    except (Stop, SystemExit):
        raise
    except BaseException as exc:
        raise BootstrapError(f"{what} {name} {failed}: {describe(exc)}", show_trace=True) from exc


def set_title(title: str) -> None:
    """Set the process title if setproctitle is installed; without touching /proc/PID/environ."""
    try:
        had = "SPT_NOENV" in os.environ
        if not had:
            os.environ["SPT_NOENV"] = "1"  # keep the environment readable (ps e, psutil)
        try:
            import setproctitle  # type: ignore[import-not-found]

            setproctitle.setproctitle(title)
        finally:
            if not had:
                os.environ.pop("SPT_NOENV", None)
    except Exception:  # noqa: BLE001, S110 - absent or failing: the title is only cosmetic
        pass


# --- bootstrap and resolution of the business code ---------------------------------------


def is_file_entry(entry: str) -> bool:
    return os.path.exists(entry) or entry.endswith(".py") or "/" in entry


def load_bootstrap(entries: list[str], namespace: dict[str, Any]) -> None:
    """Load each hook once, in order. Files run with runpy; the names they define go into the
    shared namespace that every script run starts from. Module names are imported."""
    for entry in entries:
        if is_file_entry(entry):
            path = os.path.abspath(entry)
            if not os.path.exists(path):
                raise BootstrapError(f"bootstrap file not found: {path}")
            try:
                result = runpy.run_path(path, init_globals=namespace, run_name="__gsuper_bootstrap__")
            except (Stop, SystemExit):
                raise
            except BaseException as exc:
                raise BootstrapError(f"bootstrap {path} failed: {describe(exc)}", show_trace=True) from exc
            namespace.update((k, v) for k, v in result.items() if k not in _RUNPY_NAMES)
        else:
            import_module(entry, "bootstrap module", "failed")
            top = entry.split(".")[0]
            namespace[top] = sys.modules[top]  # as `import a.b` binds `a`


def script_runner(path: str, namespace: dict[str, Any], run_name: str) -> Callable[[], object]:
    """Compile the script once; each call runs it in fresh globals (a copy of the bootstrap
    namespace), so variables do not leak from one request to the next."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise BootstrapError(f"script cannot be read: {path} ({exc.strerror})") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        raise BootstrapError(f"script {path} does not compile: {describe(exc)}") from None
    base = dict(namespace)
    base["__name__"] = run_name
    base["__file__"] = path
    base.setdefault("__builtins__", __builtins__)

    def run_script() -> None:
        exec(code, dict(base))  # noqa: S102 - running the user's script is the point

    return run_script


def resolve_handler(spec: str) -> Callable[[], object]:
    """`module:callable`, the callable possibly a dotted path. An instance method of a class
    gets one instance per worker life (made without arguments); so does a class, whose
    instance is then called per request. Functions, static and class methods are called."""
    module_name, sep, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not sep or not module_name or not attr_path:
        raise BootstrapError(f"handler {spec!r} is not in the form module:callable")
    obj = import_module(module_name, "handler module", "failed to import")

    owner = None
    parts = attr_path.split(".")
    for i, part in enumerate(parts):
        owner = obj
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = module_name + (":" + ".".join(parts[:i]) if i else "")
            raise BootstrapError(f"handler {spec!r}: {where} has no attribute {part!r}") from None

    try:
        if isinstance(obj, type):
            instance = obj()
            if not callable(instance):
                raise BootstrapError(f"handler {spec!r}: instances of {obj.__qualname__} are not callable (no __call__)")
            return instance
        if isinstance(owner, type):
            static = next((k.__dict__[parts[-1]] for k in owner.__mro__ if parts[-1] in k.__dict__), None)
            if isinstance(static, FunctionType):  # an instance method: one instance per life
                return getattr(owner(), parts[-1])
    except BootstrapError:
        raise
    except (Stop, SystemExit):
        raise
    except BaseException as exc:
        raise BootstrapError(f"handler {spec!r}: the instance could not be made: {describe(exc)}", show_trace=True) from exc
    if not callable(obj):
        raise BootstrapError(f"handler {spec!r} is not callable ({type(obj).__name__})")
    return obj


# --- the worker -----------------------------------------------------------------------------


class Worker:
    def __init__(self) -> None:
        self.stop_signal = 0
        self.raise_on_stop = True  # outside a request, a stop ends what runs at once
        self.requests = 0
        self.reporter = Reporter(os.environ.pop("GSUPER_STATUS_FD", ""))
        self.busy = BusyPage(os.environ.pop("GSUPER_BUSY_FD", ""))
        self.memory = Memory()

    # Signals ----------------------------------------------------------------------------
    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum
        if self.raise_on_stop:
            raise Stop()

    def install_signals(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)

    def sleep(self, seconds: float) -> None:
        """Sleep between requests; a stop signal ends the sleep at once."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        # pthread_sigmask runs pending Python handlers before it returns: a signal that came
        # just before the block has set stop_signal by now, so no wake-up is lost.
        try:
            if self.stop_signal:
                return
            info = signal.sigtimedwait(STOP_SIGNALS, seconds)
            if info is not None:
                self.stop_signal = info.si_signo
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    # Exit ---------------------------------------------------------------------------------
    def finish(self, reason: str, code: int, message: str | None = None) -> int:
        self.raise_on_stop = False  # a late stop signal must not cut the last reports
        self.busy.idle()  # no request runs any more: the last reports may wait for the pipe
        self.reporter.flush(self.memory)
        event = {"event": "exit", "reason": reason, "requests": self.requests}
        if message:
            event["message"] = message
        self.reporter.send(event, wait=FINAL_REPORT_WAIT)
        return code

    # Main ---------------------------------------------------------------------------------
    def main(self) -> int:
        self.install_signals()
        try:
            try:
                run, mode, settings = self.setup()
            except Stop:
                return self.finish("stopped", 0)
            except BootstrapError as exc:
                log(f"cannot start: {exc}")
                if exc.show_trace and exc.__cause__ is not None:
                    sys.stderr.write(user_trace(exc.__cause__))
                return self.finish("bootstrap", EX_CONFIG, str(exc)[:MAX_MESSAGE])
            except SystemExit as exc:  # a hook called sys.exit()
                code = exit_code(exc)
                log(f"a bootstrap hook exited with code {code}")
                return self.finish("bootstrap", code if code else EX_CONFIG)
            if self.stop_signal:
                return self.finish("stopped", 0)
            self.reporter.send({"event": "ready", "pid": os.getpid()})
            if mode == "daemon":
                return self.run_daemon(run)
            return self.run_loop(run, *settings)
        except Stop:
            return self.finish("stopped", 0)

    def setup(self) -> tuple[Callable[[], object], str, tuple[int, int, float, bool, int]]:
        mode = os.environ.get("GSUPER_MODE", "").strip() or "loop"
        if mode not in ("loop", "daemon"):
            raise BootstrapError(f"GSUPER_MODE={mode!r} is neither loop nor daemon")
        on_error = os.environ.get("GSUPER_ON_ERROR", "").strip() or "continue"
        if on_error not in ("continue", "exit"):
            raise BootstrapError(f"GSUPER_ON_ERROR={on_error!r} is neither continue nor exit")
        settings = (
            env_int("GSUPER_MAX_REQUEST"),
            env_int("GSUPER_MEMORY_LIMIT"),
            env_int("GSUPER_USLEEP") / 1e6,
            on_error == "exit",
            env_int("GSUPER_DEADLINE_NS"),
        )
        script = os.environ.get("GSUPER_SCRIPT", "").strip()
        handler = os.environ.get("GSUPER_HANDLER", "").strip()
        if bool(script) == bool(handler):
            raise BootstrapError("give exactly one of GSUPER_SCRIPT and GSUPER_HANDLER")

        cwd = os.getcwd()
        sys.path.insert(0, cwd)  # the program's own modules import
        if script:
            script = os.path.abspath(script)
            if not os.path.isfile(script):
                raise BootstrapError(f"script not found: {script}")
            script_dir = os.path.dirname(script)
            if script_dir != cwd:
                sys.path.insert(1, script_dir)  # as `python3 script.py` would have it
            sys.argv[:] = [script]

        namespace: dict[str, Any] = {}
        entries = [line.strip() for line in os.environ.get("GSUPER_BOOTSTRAP", "").splitlines() if line.strip()]
        load_bootstrap(entries, namespace)
        if script:
            # daemon mode runs an ordinary script: its `if __name__ == "__main__"` must fire
            run = script_runner(script, namespace, "__main__" if mode == "daemon" else "__gsuper__")
        else:
            run = resolve_handler(handler)
        return run, mode, settings

    def run_daemon(self, run: Callable[[], object]) -> int:
        """Run the business code once; a stop signal ends it (raises inside it)."""
        started = time.perf_counter()
        reason, code = "done", 0
        try:
            run()
        except Stop:
            self.raise_on_stop = False
            return self.finish("stopped", 0)
        except SystemExit as exc:
            self.raise_on_stop = False
            code = exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - whatever the program raised, report it
            self.raise_on_stop = False
            log("the program failed:")
            sys.stderr.write(user_trace(exc))
            self.reporter.send({"event": "error", "requests": 1, "message": describe(exc)})
            reason, code = "error", EX_SOFTWARE
        self.raise_on_stop = False
        self.requests = 1
        ms = round((time.perf_counter() - started) * 1000, 3)
        self.reporter.send({"event": "request", "requests": 1, "memory": self.memory.rss(), "ms": ms})
        return self.finish(reason, code)

    def run_loop(
        self, run: Callable[[], object], max_request: int, memory_limit: int, usleep: float, exit_on_error: bool, deadline_ns: int
    ) -> int:
        reporter, memory, busy = self.reporter, self.memory, self.busy
        perf_counter, monotonic_ns = time.perf_counter, time.monotonic_ns
        guarded = busy.map is not None
        self.raise_on_stop = False  # from now on a stop only sets the flag: no request is cut off
        up_to_max = max_request or sys.maxsize
        n = 0
        size = 1  # requests per batch: 1 unless requests are much shorter than CHECK_EVERY
        while True:
            if self.stop_signal:
                return self.finish("stopped", 0)
            before = i = n
            failure: BaseException | None = None
            started = perf_counter()
            if guarded:
                busy.begin(n + 1)
            try:
                for i in range(n + 1, min(n + size, up_to_max) + 1):  # noqa: B007 - i is the count
                    run()
            except SystemExit as exc:  # the business code chose to end the process
                self.requests = i
                return self.finish("done", exit_code(exc))
            except BaseException as exc:  # noqa: BLE001 - a failed request is logged, not fatal
                failure = exc  # request i failed; it counts, and ends the batch
            now = perf_counter()
            n = self.requests = i
            if failure is not None:
                log(f"request {n} failed:")
                sys.stderr.write(user_trace(failure))
                sys.stderr.flush()
                reporter.send({"event": "error", "requests": n, "message": describe(failure)})
                failure = None
                if exit_on_error:
                    return self.finish("error", EX_SOFTWARE)
            per_request = (now - started) / (n - before)
            if not usleep:
                size = max(1, min(int(CHECK_EVERY / per_request) if per_request > 0 else MAX_BATCH, 2 * size, MAX_BATCH))
            reporter.request(n, per_request * 1000, memory, now)
            if self.stop_signal:
                return self.finish("stopped", 0)
            if n >= up_to_max:
                return self.finish("max_request", 0)
            if memory_limit and memory.rss() > memory_limit:
                return self.finish("memory_limit", 0)
            if deadline_ns and monotonic_ns() >= deadline_ns:
                return self.finish("max_lifetime", 0)
            if usleep:
                if guarded:
                    busy.idle()
                self.sleep(usleep)


def exit_code(exc: SystemExit) -> int:
    """The exit status Python itself would give for this SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


PROGRAM = os.environ.get("GSUPER_PROGRAM", "").strip() or "python"
INDEX = os.environ.get("GSUPER_WORKER", "").strip() or "0"
TITLE = f"{PROGRAM}#{INDEX}"


def main() -> int:
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    set_title(f"gsuper: {TITLE}")
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # this runner's own folder: not the program's
    return Worker().main()


def exit_process(code: int) -> None:
    """Exit with `code`. Threads the business code left running (not daemon) would hold a
    normal interpreter exit forever, and a recycled worker must go: run the atexit handlers,
    flush, and leave without waiting for them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # stdout gone (the master's log pipe)
            pass
    threading = sys.modules.get("threading")
    if threading is not None:
        main_thread = threading.main_thread()
        left = [t.name for t in threading.enumerate() if t is not main_thread and not t.daemon and t.is_alive()]
        if left:
            log(f"exiting without waiting for {len(left)} non-daemon thread(s): {', '.join(left)[:200]}")
            import atexit

            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
