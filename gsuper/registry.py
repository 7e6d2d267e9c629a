"""Where the running master of a configuration file keeps its files, whatever the file says now.

`rundir` edited and saved while a master runs must not make the CLI look in the new folder,
say "not running", and let a `start` make a second master. So each master records its rundir
and logdir under a fixed folder, keyed on its configuration's real path: ``/run/gsuper`` for
root, ``$XDG_RUNTIME_DIR/gsuper`` or ``/tmp/gsuper-UID`` for other users (each owned by the
user, mode 0700, checked like rundir). The CLI reads the entry first (:func:`locate`); an entry
whose master no longer holds its pid file lock is ignored.

The entry also says what the master validated: the SHA-256 of the configuration file it last
loaded (at start or reload), and its program and group names. When the file still has those
bytes, `status` needs neither configobj nor the configspec to act exactly as it would after a
full load (gsuper/client.py). There is no digest when the file has an `[include]` (files added
to a glob would not change it) or after a reload that found rundir or logdir edited.
"""

from __future__ import annotations

import json
import os

# hashlib loads OpenSSL's libcrypto, 3.5 MiB of the master's RSS for one digest of a path: the
# interpreter's own SHA-256 gives the same digest.
try:
    from _sha256 import sha256  # Python <= 3.11
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found, no-redef]  # Python >= 3.12
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment]

from gsuper import daemon, fsafe

TYPE_CHECKING = False  # the CLI's fast path imports this module: no typing, config or dataclasses
if TYPE_CHECKING:
    from typing import Any

    from gsuper.config import GsuperConfig


def sha256_hex(data: bytes) -> str:
    """SHA-256 of `data` in hex (the interpreter's own, see above: hashlib would also cost the
    CLI about 4 ms of its start)."""
    return str(sha256(data).hexdigest())


def folder() -> str:
    """The registry folder of this user."""
    uid = os.geteuid()
    if uid == 0 and os.path.isdir("/run"):
        return "/run/gsuper"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "gsuper")
    return f"/tmp/gsuper-{uid}"


def entry_path(config_path: str) -> str:
    """The entry of one configuration file (its real path, hashed)."""
    digest = sha256_hex(os.path.realpath(config_path).encode())[:32]
    return os.path.join(folder(), f"{digest}.json")


def record(cfg: GsuperConfig) -> None:
    """Say where this master keeps its files and what it validated (called by the master once
    it holds the lock, and after each reload)."""
    where = folder()
    os.makedirs(where, mode=0o700, exist_ok=True)
    problem = fsafe.unsafe_dir(where)
    if problem:
        raise OSError(problem)
    doc = {
        "config": cfg.path,
        "rundir": cfg.rundir,
        "logdir": cfg.logdir,
        "pid": os.getpid(),
        "digest": cfg.digest,
        "programs": list(cfg.programs),
        "groups": {name: list(members) for name, members in cfg.groups.items()},
    }
    fsafe.write_atomic(entry_path(cfg.path), json.dumps(doc).encode(), 0o600)
    _prune(where, entry_path(cfg.path))


def read_entry(config_path: str) -> dict[str, Any] | None:
    """The entry of a configuration file's real path as its master wrote it, or None."""
    try:
        with open(entry_path(config_path), "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _prune(where: str, mine: str) -> None:
    # Entries of SIGKILLed masters are left behind; each start removes those whose master is gone.
    for name in os.listdir(where):
        path = os.path.join(where, name)
        if path == mine or not name.endswith(".json"):
            continue
        try:
            with open(path) as fh:
                rundir = str(json.load(fh)["rundir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not daemon.running_pid(os.path.join(rundir, "gsuper.pid")):
            try:
                os.unlink(path)
            except OSError:
                pass


def forget(cfg: GsuperConfig) -> None:
    """Remove this master's entry (at its exit)."""
    try:
        os.unlink(entry_path(cfg.path))
    except OSError:
        pass


def locate(cfg: GsuperConfig) -> tuple[GsuperConfig, str | None]:
    """The configuration with the rundir and logdir its running master uses, and a sentence
    when they differ from what the file says now (None when they do not, or none runs)."""
    try:
        with open(entry_path(cfg.path)) as fh:
            doc = json.load(fh)
        rundir, logdir = str(doc["rundir"]), str(doc["logdir"])
    except (OSError, ValueError, KeyError, TypeError):
        return cfg, None
    if (rundir, logdir) == (cfg.rundir, cfg.logdir):
        return cfg, None
    from dataclasses import replace

    running = replace(cfg, rundir=rundir, logdir=logdir)
    if not daemon.running_pid(running.pidfile):
        return cfg, None
    changed = [f"{key} {old} (the file now says {new})" for key, old, new in
               (("rundir", rundir, cfg.rundir), ("logdir", logdir, cfg.logdir)) if old != new]  # fmt: skip
    return running, f"the running master uses {' and '.join(changed)}; that change takes effect at the next restart"
