"""The command line's fast path for `status`, and the printing of the status document.

`gsuper -s status` is run by scripts, `watch` and monitoring, and should cost little more than
starting Python. The full path parses with docopt and loads the configuration with configobj
and the whole configspec; none of that changes the answer when the file still holds the bytes
the running master validated. So, with the standard library only:

1. the arguments, when they are in the plain form (:func:`parse_status_argv`; anything else,
   such as `--conf=x` or an abbreviated `--js`, is left to docopt);
2. the registry entry of the file's real path (gsuper/registry.py): the master's rundir, the
   SHA-256 of the file it last loaded, its program and group names;
3. the file's bytes hashed and compared; the pid file's lock; the names given with -p and -g.

When any step does not hold (no entry, the file edited since, an `[include]`, no live master,
an unknown name), :func:`status` returns None and the full path runs, so every message and exit
code stays the full path's. The answer itself comes from the master either way.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # no typing at run time: it alone costs this path about 4 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

MAX_CONFIG_BYTES = 4 << 20  # as config.MAX_CONFIG_BYTES: a bigger file takes the full path

# The tokens the fast parser knows; every other one goes to docopt.
_VALUED = {"-c": "config", "--config": "config", "-p": "programs", "--program": "programs", "-g": "groups", "--group": "groups"}


def parse_status_argv(argv: list[str]) -> dict[str, Any] | None:
    """`-s status [-c FILE] [-p NAME]... [-g GROUP]... [--json]` in any order, each option and
    its value as two words; None for anything else (docopt then parses, and judges)."""
    if argv.count("-s") != 1 or "status" not in argv:
        return None
    opts: dict[str, Any] = {"config": None, "programs": [], "groups": [], "json": False}
    i, command = 0, False
    while i < len(argv):
        word = argv[i]
        if word == "-s" and i + 1 < len(argv) and argv[i + 1] == "status" and not command:
            command, i = True, i + 2
        elif word == "--json" and not opts["json"]:
            opts["json"], i = True, i + 1
        elif word in _VALUED and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            key, value = _VALUED[word], argv[i + 1]
            if key == "config":
                if opts["config"] is not None:
                    return None
                opts["config"] = value
            else:
                opts[key].append(value)
            i += 2
        else:
            return None
    if not command:
        return None
    if opts["config"] is None:
        opts["config"] = "gsuper.ini"
    return opts


def status(opts: dict[str, Any]) -> int | None:
    """Print the status of the master of `opts["config"]` and return the exit code, or None
    when the fast path cannot vouch for the answer (the full path then runs)."""
    from gsuper import control, daemon, registry

    path = os.path.realpath(opts["config"])
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    entry = registry.read_entry(path)
    if not entry or not entry.get("digest") or entry.get("config") != path:
        return None
    if len(raw) > MAX_CONFIG_BYTES or registry.sha256_hex(raw) != entry["digest"]:
        return None
    programs, groups = opts["programs"], opts["groups"]
    known_groups = entry.get("groups")
    if not isinstance(entry.get("programs"), list) or not isinstance(known_groups, dict):
        return None
    if any(p not in entry["programs"] for p in programs) or any(g not in known_groups for g in groups):
        return None  # the full path names the unknown one, from the file
    rundir = entry.get("rundir")
    if not isinstance(rundir, str) or not daemon.running_pid(os.path.join(rundir, "gsuper.pid")):
        return None
    try:
        reply = control.request(os.path.join(rundir, "gsuper.sock"), status_request(programs, groups, opts["json"]))
    except control.ControlError as exc:
        print(f"gsuper: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"gsuper: {reply.get('error', 'the master refused the request')}", file=sys.stderr)
        return 2 if reply.get("config_error") else 1
    print_reply(reply, opts["json"])
    return 0


def status_request(programs: list[str], groups: list[str], as_json: bool) -> dict[str, Any]:
    """The control request of `status` (with `--json`, for the text the master encodes)."""
    request: dict[str, Any] = {"cmd": "status", "programs": programs, "groups": groups}
    if as_json:
        request["format"] = "json"
    return request


def status_json(status: dict[str, Any]) -> str:
    """The text `status --json` prints: the document without what only the CLI's stop reads
    (`stop_in_s`, `stopping`), as `json.dumps(indent=1)` writes it. Changes `status`."""
    for row in status["workers"]:
        row.pop("stop_in_s", None)
    status["master"].pop("stopping", None)
    return dumps_indent1(status)


def print_reply(reply: dict[str, Any], as_json: bool) -> None:
    """Print a status reply: the master's text (`json`), or the document (`status`) from a
    master that does not encode it (one started by an older gsuper, running across an upgrade)."""
    if as_json and isinstance(reply.get("json"), str):
        print(reply["json"])
        return
    print_status(reply["status"], as_json)


def print_status(status: dict[str, Any], as_json: bool) -> None:
    """`status` as the command line prints it: the table, or with `as_json` the JSON document."""
    if as_json:
        print(status_json(status))
        return
    m = status["master"]
    print(f"master {m['pid']}  up {_duration(m['uptime_s'])}  {m['config']}")
    rows: list[tuple[str, ...]] = [("PROGRAM", "#", "PID", "STATE", "UPTIME", "RESTARTS", "REQUESTS", "RSS", "LAST EXIT")]
    for w in status["workers"]:
        last = w["last_exit"]
        rows.append(
            (
                w["program"],
                str(w["index"]),
                str(w["pid"] or "-"),
                w["state"],
                _duration(w["uptime_s"]) if w["pid"] else "-",
                str(w["restarts"]),
                str(w["requests"]),
                _size(w["rss_bytes"]),
                f"{last['reason']} ({last['code']})" if last else "-",
            )
        )
    if any(w.get("user") for w in status["workers"]):  # a USER column only where programs set one
        rows = [(*r[:4], "USER" if i == 0 else status["workers"][i - 1].get("user") or "-", *r[4:]) for i, r in enumerate(rows)]
    print_table(rows)
    scaled = [p for p in status.get("programs", []) if p["scale_source"]]
    if scaled:  # autoscaling: one row per program that reads a backlog
        print()
        scale_rows: list[tuple[str, ...]] = [("PROGRAM", "WORKERS", "DESIRED", "MIN", "MAX", "SOURCE", "BACKLOG")]
        for p in scaled:
            low = p["numprocs"] if p["floor"] is None else p["floor"]
            backlog = "-" if p["backlog"] is None else str(p["backlog"])
            if p["backlog_error"]:
                backlog += f" (reading failed: {p['backlog_error']})"
            workers = str(p["workers"]) + (f" (+{p['draining']} draining)" if p["draining"] else "")
            limits = (str(p["desired"]), str(low), str(p["numprocs_max"]))
            scale_rows.append((p["name"], workers, *limits, p["scale_source"], backlog))
        print_table(scale_rows)
    # A warm program running cold says why, once per program.
    cold = {w["program"]: w.get("warm_error") for w in status["workers"] if w.get("warm") is False}
    for name, why in cold.items():
        print(f"{name}: warm: false ({why or 'no template yet'})")


def dumps_indent1(doc: Any) -> str:
    """`json.dumps(doc, indent=1)`, the same text, about four times faster.

    With an indent, the json module leaves its C encoder for a pure-Python one, and a status
    of 1,000 workers took 25 ms to print. Here each container is one call of the C encoder
    whose item separator holds the newline and the indent of its level; its non-empty
    containers are encoded the same way, one level deeper, and put where a placeholder string
    (a lone NUL) stood. A document with a NUL in any string is left to the json module.
    """
    try:
        return _indented(doc, 0)
    except _HasNul:
        return json.dumps(doc, indent=1)


class _HasNul(Exception):
    """A string holds the placeholder's character."""


_NUL = "\x00"
_NUL_JSON = json.dumps(_NUL)
_ENCODERS: dict[int, Any] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _encoder(level: int) -> Any:
    encode = _ENCODERS.get(level)
    if encode is None:  # the items of a container at `level` stand one space deeper
        encode = _ENCODERS[level] = json.JSONEncoder(separators=(",\n" + " " * (level + 1), ": ")).encode
    return encode


def _indented(obj: Any, level: int) -> str:
    if not isinstance(obj, (dict, list)):
        return json.dumps(obj)
    if not obj:
        return "{}" if isinstance(obj, dict) else "[]"
    inner, outer = " " * (level + 1), " " * level
    kinds = set(map(type, obj.values() if isinstance(obj, dict) else obj))  # in C, unlike a loop
    if kinds <= _SCALARS:  # a status row: one call of the C encoder
        text = _encoder(level)(obj)
        return f"{text[0]}\n{inner}{text[1:-1]}\n{outer}{text[-1]}"
    if isinstance(obj, list) and kinds <= {dict, list}:  # the list of rows
        parts: list[str] = []
        run: list[Any] = []
        for value in obj:
            if value and isinstance(value, dict) and set(map(type, value.values())) <= _SCALARS:
                run.append(value)
                continue
            if run:
                parts.append(_flat_rows(run, level + 1))
                run = []
            parts.append(_indented(value, level + 1))
        if run:
            parts.append(_flat_rows(run, level + 1))
        return f"[\n{inner}" + f",\n{inner}".join(parts) + f"\n{outer}]"
    # Scalars and containers mixed: the containers' places held by a NUL, filled in after.
    if isinstance(obj, dict):
        nested: list[Any] = [k for k, v in obj.items() if isinstance(v, (dict, list)) and v]
        flat: Any = dict(obj)
    else:
        nested = [i for i, v in enumerate(obj) if isinstance(v, (dict, list)) and v]
        flat = list(obj)
    for key in nested:
        flat[key] = _NUL
    text = _encoder(level)(flat)
    if text.count("\\u0000") != len(nested):  # a NUL of the document's own
        raise _HasNul
    pieces = f"{text[0]}\n{inner}{text[1:-1]}\n{outer}{text[-1]}".split(_NUL_JSON)
    out = [pieces[0]]
    for key, piece in zip(nested, pieces[1:]):
        out.append(_indented(obj[key], level + 1))
        out.append(piece)
    return "".join(out)


def _flat_rows(rows: list[dict[str, Any]], level: int) -> str:
    """Non-empty dicts of scalars at `level`, in one call of the C encoder, joined as list items.

    A raw newline stands only in separators (the encoder writes it as \\n in a string), and in
    a dict of scalars no separator follows a `}` or precedes a `{`: so `},<newline>{` is only
    ever the boundary of two rows.
    """
    inner, outer = " " * (level + 1), " " * level
    text = _encoder(level)(rows)  # [{row 0},<sep>{row 1}]: every separator the rows' own
    text = text[2:-2].replace(f"}},\n{inner}{{", f"\n{outer}}},\n{outer}{{\n{inner}")
    return f"{{\n{inner}{text}\n{outer}}}"


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)
