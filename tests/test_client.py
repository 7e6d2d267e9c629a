"""The command line's fast path for `status` (gsuper/client.py): it parses only what docopt
would parse the same way, and answers only when the full path would answer the same."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from docopt import docopt

from conftest import BIN
from gsuper import cli, client, control, registry

SLEEPER = """
[program:sleeper]
command = sleep 1000
numprocs = 2

[program:other]
command = sleep 1000

[group:sleepy]
programs = sleeper
"""

ARGVS = [
    ["-s", "status"],
    ["-s", "status", "--json"],
    ["-s", "status", "-c", "x.ini"],
    ["-c", "x.ini", "-s", "status", "--json"],
    ["-s", "status", "--config", "x.ini", "-p", "a", "-p", "b", "-g", "g"],
    ["-s", "status", "--program", "a", "--group", "g", "--json"],
    ["-s", "status", "-c", "status", "-p", "status"],
    ["-s", "status", "-c", ""],
    # left to docopt: abbreviations, joined values, repeats, other commands, stray words
    ["-s", "status", "--js"],
    ["-s", "status", "--config=x.ini"],
    ["-s", "status", "-cx.ini"],
    ["-s", "status", "--json", "--json"],
    ["-s", "status", "-c", "a", "-c", "b"],
    ["-s", "status", "-c"],
    ["-s", "status", "-p", "-x"],
    ["-s", "status", "extra"],
    ["-s", "stop"],
    ["status", "-s"],
    ["-s", "-s", "status"],
    ["-s", "status", "-h"],
    ["-s", "status", "--version"],
    ["-s", "status", "--"],
    [],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a) or "(none)")
def test_fast_parse_agrees_with_docopt(argv: list[str]) -> None:
    fast = client.parse_status_argv(argv)
    if fast is None:
        return  # docopt parses it, as before: nothing to compare
    args = docopt(cli.__doc__ or "", argv=argv, version="x", default_help=True)
    assert args["status"] and args["-s"]
    assert [c for c in cli.COMMANDS if args[c]] == ["status"]
    assert fast == {"config": args["--config"], "programs": args["--program"], "groups": args["--group"], "json": args["--json"]}


def test_fast_parse_takes_the_plain_forms() -> None:
    # Not everything may fall back: the forms scripts use must take the fast path.
    assert client.parse_status_argv(["-s", "status"]) == {"config": "gsuper.ini", "programs": [], "groups": [], "json": False}
    assert client.parse_status_argv(["-s", "status", "-c", "a.ini", "--json", "-p", "x"]) is not None


def test_sha256_matches_hashlib() -> None:
    for data in (b"", b"[gsuper]\n", bytes(range(256)) * 99):
        assert registry.sha256_hex(data) == hashlib.sha256(data).hexdigest()


# -- through the real command line ----------------------------------------------------------------

PROBE = """
import sys
before = set(sys.modules)  # what the interpreter itself loaded (Python 3.9's site loads typing)
sys.path.insert(0, sys.argv[1])
from gsuper.cli import main
code = main(sys.argv[2:])
heavy = ("docopt", "configobj", "validate", "gevent", "psutil", "gsuper.config", "typing", "socket")
import json
print(json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules and m not in before)}), file=sys.stderr)
"""


def probe(gs, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run main() in a fresh interpreter; its output and which heavy modules it imported."""
    root = str(Path(BIN).resolve().parent.parent)
    argv = [sys.executable, "-c", PROBE, root, *args, "-c", str(gs.config)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=gs.root)
    *rest, last = proc.stderr.strip().splitlines() or [""]
    proc.stderr = "\n".join(rest)
    return proc, json.loads(last)


def comparable(doc: dict) -> dict:
    for w in doc["workers"]:
        for key in ("uptime_s", "rss_bytes", "pss_bytes", "busy_s"):
            w.pop(key, None)
    doc["master"].pop("uptime_s")
    return doc


def client_doc(doc: dict) -> dict:
    for w in doc["workers"]:
        w.pop("stop_in_s")
    doc["master"].pop("stopping")
    return doc


def test_a_reply_without_the_text_is_printed_from_the_document(capsys) -> None:
    doc = {"master": {"pid": 1, "stopping": False}, "workers": [dict(ROW, stop_in_s=None)], "programs": []}
    client.print_reply({"ok": True, "status": json.loads(json.dumps(doc))}, True)  # an older master
    assert capsys.readouterr().out == json.dumps(client_doc(doc), indent=1) + "\n"
    client.print_reply({"ok": True, "json": "{}"}, True)
    assert capsys.readouterr().out == "{}\n"


def test_status_takes_the_fast_path_and_answers_as_the_full_path(gs):
    gs.write(SLEEPER)
    gs.start()
    gs.wait_workers("sleeper")
    fast, seen = probe(gs, "-s", "status", "--json")
    assert seen == {"code": 0, "heavy": []}, fast.stderr
    full, seen_full = probe(gs, "-s", "status", "--jso")  # an abbreviation: docopt parses it
    assert seen_full["code"] == 0 and "configobj" in seen_full["heavy"]
    assert comparable(json.loads(fast.stdout)) == comparable(json.loads(full.stdout))

    # The master's text (format: json) is the document a master without it sends, encoded so.
    sock = str(gs.root / "run" / "gsuper.sock")
    text = control.request(sock, {"cmd": "status", "format": "json"})["json"]
    doc = control.request(sock, {"cmd": "status"})["status"]
    assert comparable(json.loads(text)) == comparable(client_doc(doc)) and text == json.dumps(json.loads(text), indent=1)

    table, seen = probe(gs, "-s", "status", "-g", "sleepy")
    assert seen["heavy"] == [] and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].startswith("master ") and lines[1].split()[:4] == ["PROGRAM", "#", "PID", "STATE"]
    assert [ln.split()[0] for ln in lines[2:]] == ["sleeper", "sleeper"]

    # An unknown name: the full path answers, from the file, as before.
    bad, seen = probe(gs, "-s", "status", "-p", "nope")
    assert seen["code"] == 2 and "configobj" in seen["heavy"]
    assert bad.stderr.strip() == f"gsuper: {gs.config.resolve()}: no program named 'nope'"
    gs.run("-s", "stop", check=True)
    gone, seen = probe(gs, "-s", "status")  # no master: the full path says so
    assert seen["code"] == 1 and "not running" in gone.stderr and "configobj" in seen["heavy"]


def test_an_edit_not_yet_reloaded_takes_the_full_path_until_the_reload(gs):
    gs.write(SLEEPER)
    gs.start()
    gs.wait_workers("sleeper")
    gs.write(SLEEPER + "\n[program:third]\ncommand = sleep 1000\n")
    out, seen = probe(gs, "-s", "status", "-p", "third")  # a name only the edited file knows
    # The full path: the file validates, and the master, which has no third yet, says so.
    assert "configobj" in seen["heavy"] and seen["code"] != 0
    gs.run("-s", "reload", check=True)
    gs.wait_workers("third")
    out, seen = probe(gs, "-s", "status", "-p", "third", "--json")
    assert seen == {"code": 0, "heavy": []} and [w["program"] for w in json.loads(out.stdout)["workers"]] == ["third"]
    gs.write(SLEEPER.replace("numprocs = 2", "numprocs = lots"))  # broken: the warning comes back
    out, seen = probe(gs, "-s", "status")
    assert seen["code"] == 0 and "acting on the running master anyway" in out.stderr
    gs.run("-s", "stop", check=True)


def test_a_file_with_an_include_takes_the_full_path(gs):
    gs.file("conf.d/a.ini", "[program:inc]\ncommand = sleep 1000\n")
    gs.write(SLEEPER + "\n[include]\nfiles = conf.d/*.ini\n")
    gs.start()
    gs.wait_workers("inc")
    out, seen = probe(gs, "-s", "status", "--json")
    assert seen["code"] == 0 and "configobj" in seen["heavy"]
    assert {w["program"] for w in json.loads(out.stdout)["workers"]} == {"sleeper", "other", "inc"}
    gs.run("-s", "stop", check=True)


ROW = {"program": "a", "index": 0, "pid": 7, "state": "RUNNING", "uptime_s": 1.5, "rss_bytes": None, "busy_s": 0.25}
DOCS = [
    {"master": {"pid": 1, "config": "/x.ini"}, "workers": [dict(ROW, index=i) for i in range(5)], "programs": []},
    {"workers": [ROW, dict(ROW, last_exit={"reason": "crashed", "code": -9}), ROW, {}, ROW, [], [ROW, [1, [2, []]]]]},
    {"a": [], "b": {}, "c": [[], {}], "d": [1, "two", None, True, 2.5, {"e": {"f": [{"g": 1}]}}]},
    {"keys": {"}": 1, ",\n {": "}},\n   {", "quote\"and\\backslash": "[{]}", "tab\tnew\nline": "é ✓ \U0001f600"}},
    {"rows": [{"s": "},\n   {"}, {"s": "}"}, {"s": "{"}, {"n": -0.0, "big": 10**30, "e": 1e-7, "nan": float("nan")}]},
    {"nul": "a\x00b", "rows": [ROW, ROW]},  # a NUL of the document's own: the json module writes it
    {"nul": {"\x00": [1, {"x": 2}]}},
    [ROW, ROW],
    [],
    "text",
    3,
]


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
def test_dumps_indent1_writes_what_the_json_module_writes(doc) -> None:
    assert client.dumps_indent1(doc) == json.dumps(doc, indent=1)


def test_dumps_indent1_on_a_status_of_1000_workers() -> None:
    rows = [
        dict(ROW, index=i, last_exit=None if i % 3 else {"reason": "max_request", "code": 0}, last_error=None, user=None)
        for i in range(1000)
    ]
    doc = {"master": {"pid": 1, "uptime_s": 2.0}, "workers": rows, "programs": [{"name": "a", "backlog": None}]}
    assert client.dumps_indent1(doc) == json.dumps(doc, indent=1)
