"""Configuration: defaults from the configspec, units, and one clear error for each mistake."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gsuper import config
from gsuper.config import ConfigError, load, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    (tmp_path / "task.php").write_text("<?php\n")
    (tmp_path / "boot.php").write_text("<?php\n")
    path = tmp_path / "gsuper.ini"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("50M", 50 * 2**20),
        ("50", 50 * 2**20),
        ("1G", 2**30),
        ("512K", 512 * 1024),
        ("0", 0),
        ("1.5M", int(1.5 * 2**20)),
        ("10MB", 10 * 2**20),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text,expected", [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("500ms", 0.5), ("1h", 3600.0), ("0.5", 0.5)]
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "5x", "-1", "1 0"])
def test_bad_units(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_defaults_come_from_the_spec(tmp_path):
    cfg = load(write(tmp_path, "[program:a]\nrunner = php\nscript = task.php\n[program:b]\ncommand = sleep 1\n"))
    a, b = cfg.programs["a"], cfg.programs["b"]
    assert cfg.rundir == str(tmp_path / "run") and cfg.logdir == str(tmp_path / "log")
    assert cfg.memory_check_interval_s == 1.0 and cfg.log_max_bytes == 50 * 2**20
    assert (a.mode, b.mode) == ("loop", "daemon")
    assert a.numprocs == 1 and a.max_request == 0 and a.memory_limit_bytes == 0 and a.usleep_us == 1000
    assert a.autorestart == "true" and a.exitcodes == (0,) and a.startsecs_s == 1.0 and a.startretries == 3
    assert a.stopsignal == signal.SIGTERM and a.stop_timeout_s == 10.0
    assert a.directory == str(tmp_path) and a.script == str(tmp_path / "task.php")
    assert b.runner == "exec" and b.command == "sleep 1"


def test_contract_example_parses(tmp_path):
    text = """
[gsuper]
rundir  = run            # pid file and control socket live here
logdir  = log
loglevel = info

[program:member_1]
runner       = php
script       = task.php
bootstrap    = boot.php, boot.php
numprocs     = 2        # workNum in the original
max_request  = 0
memory_limit = 50M      # bare number = MB
usleep       = 1000
autorestart  = unexpected
exitcodes    = 0, 2
startsecs    = 1
startretries = 3
stopsignal   = QUIT
stop_timeout = 30s
directory    = .
environment  = APP_ENV=prod, QUEUE=member, LIST="a,b"

[program:member_2]
command = /usr/bin/env sh -c 'echo a, b'

[group:member]
programs = member_1, member_2
"""
    cfg = load(write(tmp_path, text))
    m1 = cfg.programs["member_1"]
    assert m1.numprocs == 2 and m1.memory_limit_bytes == 50 * 2**20 and m1.stop_timeout_s == 30
    assert m1.exitcodes == (0, 2) and m1.stopsignal == signal.SIGQUIT and m1.autorestart == "unexpected"
    assert dict(m1.environment) == {"APP_ENV": "prod", "QUEUE": "member", "LIST": "a,b"}
    assert m1.bootstrap == (str(tmp_path / "boot.php"),) * 2
    assert cfg.programs["member_2"].command == "/usr/bin/env sh -c 'echo a, b'"
    assert cfg.groups == {"member": ("member_1", "member_2")}
    assert cfg.select([], ["member"]) == ["member_1", "member_2"]


def test_semicolon_comments_and_quoted_hash(tmp_path):
    cfg = load(write(tmp_path, "; supervisor style\n[program:a]\n; comment\ncommand = 'sh -c \"echo a # b\"'\n"))
    assert cfg.programs["a"].command == 'sh -c "echo a # b"'


ERRORS = [
    ("[program:a]\ncommand = sleep 1\nnumproc = 2\n", "[program:a] numproc: unknown key"),
    ("[programs:a]\ncommand = sleep 1\n", "[programs:a]: unknown section"),
    ("[program:a]\ncommand = sleep 1\nnumprocs = two\n", "[program:a] numprocs:"),
    ("[program:a]\ncommand = sleep 1\nnumprocs = 0\n", "[program:a] numprocs:"),
    ("[program:a]\ncommand = sleep 1\nmemory_limit = lots\n", "[program:a] memory_limit:"),
    ("[program:a]\ncommand = sleep 1\nstop_timeout = 5x\n", "[program:a] stop_timeout:"),
    ("[program:a]\ncommand = sleep 1\nstopsignal = BOGUS\n", "[program:a] stopsignal:"),
    ("[program:a]\ncommand = sleep 1\nautorestart = maybe\n", "[program:a] autorestart:"),
    ("[program:a]\nrunner = php\nscript = missing.php\n", "[program:a] script: file not found"),
    ("[program:a]\nrunner = php\nscript = task.php\nbootstrap = nope.php\n", "[program:a] bootstrap: file not found"),
    ("[program:a]\ncommand = sleep 1\ndirectory = /no/such/dir\n", "[program:a] directory: no such folder"),
    ("[program:a]\ncommand = no-such-program-xyz --flag\n", "[program:a] command: 'no-such-program-xyz' is not found on PATH"),
    ("[program:a]\ncommand = ./missing.sh\n", "[program:a] command:"),
    ("[program:a]\nrunner = exec\n", "[program:a] command: required"),
    ("[program:a]\nrunner = php\n", "[program:a]: give exactly one of script and handler"),
    ("[program:a]\ncommand = sleep 1\n[group:g]\nprograms = a, b\n", "[group:g] programs: no program named 'b'"),
    ('[program:a]\ncommand = sh -c "echo a # b"\n', "[program:a] command: the value looks cut by a '#' comment"),
    ("[program:a]\ncommand = sleep 1\n[program:a]\ncommand = sleep 2\n", "Duplicate section name"),
    ("this is not ini\n", "line 1"),
    ("[program:a b]\ncommand = sleep 1\n", "may hold only letters"),
    ("numprocs = 2\n[program:a]\ncommand = sleep 1\n", "stands before any [section]"),
    ("[program:a]\ncommand = sleep 1\nmax_request = 5\n", "max_request: only for mode = loop"),
    ("[program:a]\ncommand = sleep 1\nenvironment = NOEQUALS\n", "[program:a] environment:"),
    ("[program:a]\nrunner = php\nscript = task.php\nrequest_timeout = -1\n", '[program:a] request_timeout: "-1" is negative'),
    (
        "[program:a]\nrunner = php\nscript = task.php\nrequest_timeout = soon\n",
        '[program:a] request_timeout: "soon" is not a duration',
    ),
    ("[program:a]\ncommand = sleep 1\nmax_lifetime = -5m\n", '[program:a] max_lifetime: "-5m" is negative'),
    ("[program:a]\ncommand = sleep 1\nmax_lifetime = 1 hour\n", "[program:a] max_lifetime: "),
    ("[program:a]\ncommand = sleep 1\nmax_lifetime_jitter = -1\n", "[program:a] max_lifetime_jitter: "),
    ("[program:a]\ncommand = sleep 1\nmax_lifetime_jitter = x\n", "[program:a] max_lifetime_jitter: "),
    (
        "[program:a]\nrunner = php\nmode = daemon\nscript = task.php\nrequest_timeout = 5\n",
        "request_timeout: only for mode = loop",
    ),
]


@pytest.mark.parametrize("text,fragment", ERRORS)
def test_errors_name_file_section_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(path), message
    assert fragment in message, message
    assert "\n" not in message


def test_unreadable_and_non_utf8(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[program:a]\ncommand = sleep \xff\n")
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        load(str(path))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(str(tmp_path / "absent.ini"))
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(ConfigError, match="cannot be read"):
            load(str(path))


def test_docs_configuration_reference_is_current():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert config.reference_markdown().strip() in doc


def test_every_contract_key_is_in_the_spec():
    keys = {line.split("=")[0].strip() for line in config.SPEC_PROGRAM.splitlines() if line and not line.startswith("#")}
    contract = {
        "runner", "script", "handler", "command", "bootstrap", "numprocs", "max_request", "max_request_jitter", "memory_limit",
        "usleep", "autorestart", "exitcodes", "startsecs", "startretries", "stopsignal", "stop_timeout", "directory",
        "environment", "mode",
        "request_timeout", "max_lifetime", "max_lifetime_jitter",  # 0.2: guarding the request
    }  # fmt: skip
    assert contract <= keys


def test_check_command_line(tmp_path):
    good = write(tmp_path, "[program:a]\ncommand = sleep 1\nnumprocs = 3\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bin/gsuper"), "-s", "check", "-c", good], capture_output=True, text=True)
    assert proc.returncode == 0 and "configuration OK (1 programs, 3 workers" in proc.stdout
    bad = write(tmp_path, "[program:a]\ncommand = sleep 1\nnumprocs = x\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bin/gsuper"), "-s", "check", "-c", bad], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "[program:a] numprocs" in proc.stderr


def test_request_guard_keys(tmp_path):
    cfg = load(
        write(
            tmp_path,
            "[program:a]\nrunner = php\nscript = task.php\nrequest_timeout = 2\nmax_lifetime = 1h\nmax_lifetime_jitter = 5m\n"
            "[program:b]\ncommand = sleep 1\nrequest_timeout = 500ms\n[program:c]\ncommand = sleep 1\n",
        )
    )
    a, b, c = (cfg.programs[n] for n in "abc")
    assert (a.request_timeout_s, a.max_lifetime_s, a.max_lifetime_jitter_s) == (2.0, 3600.0, 300.0)
    assert b.request_timeout_s == 0.5  # an exec program that reports its requests
    assert (c.request_timeout_s, c.max_lifetime_s, c.max_lifetime_jitter_s) == (0.0, 0.0, 0.0)


def test_a_bad_guard_value_is_exit_2_naming_the_key(tmp_path):
    bad = write(tmp_path, "[program:a]\nrunner = php\nscript = task.php\nrequest_timeout = -3\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bin/gsuper"), "-s", "check", "-c", bad], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "[program:a] request_timeout" in proc.stderr


def test_memory_check_interval_globally_and_per_program(tmp_path):
    cfg = load(
        write(
            tmp_path,
            "[gsuper]\nmemory_check_interval = 2s\n[program:a]\ncommand = sleep 1\n"
            "[program:b]\ncommand = sleep 1\nmemory_check_interval = 250ms\n",
        )
    )
    assert cfg.memory_check_interval_s == 2.0
    assert cfg.programs["a"].memory_check_interval_s is None and cfg.programs["b"].memory_check_interval_s == 0.25
