"""Taking over a supervisor deployment, through the real command line: `user`, `[include]`,
`autostart`, `logfile` / `stderr_logfile` with rotation and reopen, per-worker expansions,
Unicode names, and one sentence for each kind of bad input."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, PHP, Gsuper, wait_for

pytestmark = pytest.mark.timeout(90)

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a worker as another user needs a root master")

# A daemon that says it started, and on TERM finishes (drains) and says so.
DRAINER = """\
#!/bin/sh
echo "started $GSUPER_WORKER as $(id -un)"
trap 'echo "drained $GSUPER_WORKER"; exit 0' TERM
while :; do sleep 0.05; done
"""


@pytest.fixture
def open_gs() -> Iterator[Gsuper]:
    """A Gsuper in a folder every user may enter (pytest's own tmp folders are root's only)."""
    root = Path(tempfile.mkdtemp(prefix="gsuper-takeover-"))
    root.chmod(0o755)
    g = Gsuper(root)
    try:
        yield g
    finally:
        g.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups lines of /proc/PID/status."""
    out: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- user ------------------------------------------------------------------------------------


@as_root
def test_worker_runs_as_its_user_logs_and_drains(open_gs):
    gs = open_gs
    gs.file("drainer.sh", DRAINER, 0o755)
    gs.write(
        """
        [program:web]
        command = ./drainer.sh
        user = nobody
        numprocs = 2
        startsecs = 0
        """
    )
    gs.start()
    rows = gs.wait_workers("web")
    assert {r["user"] for r in rows} == {"nobody"}
    for row in rows:
        ids = proc_ids(row["pid"])
        assert set(ids["Uid"]) == {NOBODY.pw_uid} and set(ids["Gid"]) == {NOBODY.pw_gid}
        assert set(ids["Groups"]) <= set(os.getgrouplist("nobody", NOBODY.pw_gid))
    wait_for(lambda: gs.log("web").count("as nobody") == 2, what="both workers' first lines in web.log")
    table = gs.run("-s", "status", check=True).stdout
    assert "USER" in table.splitlines()[1] and "nobody" in table
    gs.run("-s", "stop", check=True)
    log = gs.log("web")
    assert "drained 0" in log and "drained 1" in log
    assert not gs.running()


@as_root
@pytest.mark.skipif(PHP is None, reason="php is not installed")
def test_php_runner_as_nobody_reports_over_the_status_pipe(open_gs):
    gs = open_gs
    gs.file("task.php", "<?php\necho 'hello from ', posix_getuid(), \"\\n\";\nusleep(20000);\n")
    gs.write(
        """
        [program:php]
        runner = php
        script = task.php
        user = 65534
        max_request = 3
        """
    )
    gs.start()
    # RUNNING at the ready report, and requests counted: the status pipe works for nobody.
    wait_for(lambda: any(w["requests"] > 0 for w in gs.workers("php")), what="a reported request")
    wait_for(lambda: f"hello from {NOBODY.pw_uid}" in gs.log("php"), what="the task's output")
    wait_for(lambda: "max_request" in str([w["last_exit"] for w in gs.workers("php")]), what="a recycle")
    assert gs.workers("php")[0]["user"] == "nobody"
    gs.run("-s", "stop", check=True)


def test_unknown_user_is_a_config_error(gs):
    gs.write("[program:a]\ncommand = sleep 1\nuser = no_such_user_here\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "[program:a] user: no such user 'no_such_user_here'" in line and str(gs.config) in line


@as_root
def test_user_who_cannot_enter_the_directory_is_a_config_error(gs):
    # pytest's tmp folders are root's alone (0700): nobody cannot enter them.
    gs.write("[program:a]\ncommand = sleep 1\nuser = nobody\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    assert f"directory: user nobody cannot enter {gs.root}" in one_error_line(proc)


@as_root
def test_non_root_master_with_user_is_a_config_error(open_gs):
    gs = open_gs
    gs.write("[program:a]\ncommand = sleep 1\nuser = root\n")
    gs.config.chmod(0o644)
    argv = ["setpriv", "--reuid", "nobody", "--regid", str(NOBODY.pw_gid), "--clear-groups"]
    argv += [sys.executable, BIN, "-s", "check", "-c", str(gs.config)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=gs.root)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "[program:a] user: only a master running as root can run workers as root" in line


# -- include ---------------------------------------------------------------------------------


def test_include_reload_sees_added_and_removed_files(gs):
    gs.file("conf.d/b.ini", "[program:b]\ncommand = sleep 30\nstartsecs = 0\n")
    gs.write(
        """
        [include]
        files = conf.d/*.ini  other.ini

        [program:a]
        command = sleep 30
        startsecs = 0

        [group:both]
        programs = a, b
        """
    )
    gs.file("other.ini", "[program:o]\ncommand = sleep 30\nstartsecs = 0\n")
    assert "3 programs" in gs.run("-s", "check", check=True).stdout
    gs.start()
    gs.wait_workers("b")
    assert {w["program"] for w in gs.status("-g", "both")["workers"]} == {"a", "b"}
    gs.file("conf.d/c.ini", "[program:c]\ncommand = sleep 30\nstartsecs = 0\n")
    out = gs.run("-s", "reload", check=True).stdout
    assert "added c" in out
    gs.wait_workers("c")
    (gs.root / "other.ini").unlink()
    out = gs.run("-s", "reload", check=True)
    assert "removed o" in out.stdout and "matches no file" in out.stderr
    assert {w["program"] for w in gs.workers()} == {"a", "b", "c"}
    gs.run("-s", "stop", check=True)


def test_included_sections_expand_here_to_their_own_folder(gs):
    gs.file(
        "conf.d/x.ini",
        """
        [program:x]
        command = sh -c 'echo "here=%(here)s pwd=$(pwd)"; exec sleep 30'
        directory = %(here)s
        logfile = log/x.log
        startsecs = 0
        """,
    )
    gs.write("[include]\nfiles = %(here)s/conf.d/*.ini\n")
    gs.start()
    conf_d = gs.root / "conf.d"
    # %(here)s is the included file's folder; a relative logfile is relative to the main file's.
    wait_for(lambda: f"here={conf_d} pwd={conf_d}" in gs.log("x"), what="the included program's line")
    gs.run("-s", "stop", check=True)


def test_include_that_matches_nothing_is_a_warning(gs):
    gs.write("[include]\nfiles = conf.d/*.conf\n[program:a]\ncommand = sleep 1\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 0
    assert proc.stderr.strip() == f"gsuper: warning: {gs.config}: [include] files: conf.d/*.conf matches no file"


def test_include_loop_is_an_error(gs):
    gs.file("conf.d/a.ini", "[include]\nfiles = b.ini\n[program:a]\ncommand = sleep 1\n")
    gs.file("conf.d/b.ini", "[include]\nfiles = a.ini\n")
    gs.write("[include]\nfiles = conf.d/a.ini\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"gsuper: {gs.root / 'conf.d' / 'b.ini'}: [include] files:") and "include loop" in line


@pytest.mark.parametrize(
    "included,expected",
    [
        ("[program:x]\ncommand = sleep 1\nnumprocs = many\n", '[program:x] numprocs: the value "many" is of the wrong type'),
        ("[program:x]\ncommand = sleep 1\nnumprocz = 2\n", "[program:x] numprocz: unknown key"),
        ("[program:x]\ncommand = sleep 1\njunk line\n", "at line 3"),
        ("[gsuper]\nlogdir = elsewhere\n", "[gsuper]: an included file holds only [program:NAME], [group:NAME]"),
        ("[program:a]\ncommand = sleep 1\n", "[program:a] is already in "),
    ],
)
def test_error_inside_an_included_file_names_it(gs, included, expected):
    bad = gs.file("conf.d/bad.ini", included)
    gs.write("[include]\nfiles = conf.d/*.ini\n[program:a]\ncommand = sleep 1\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"gsuper: {bad}: ") and expected in line, line


# -- autostart ------------------------------------------------------------------------------


def test_autostart_false_is_loaded_stopped_and_started_only_by_name(gs):
    gs.write(
        """
        [program:on]
        command = sleep 30
        startsecs = 0

        [program:off]
        command = sleep 30
        numprocs = 2
        autostart = false
        startsecs = 0

        [group:all]
        programs = on, off
        """
    )
    out = gs.start().stdout
    assert "on: 1 worker started" in out and "off" not in out
    assert [w["state"] for w in gs.workers("off")] == ["STOPPED", "STOPPED"]
    gs.run("-s", "start", "-g", "all", check=True)  # a group does not start it
    assert [w["state"] for w in gs.workers("off")] == ["STOPPED", "STOPPED"]
    assert "off: 2 workers started" in gs.run("-s", "start", "-p", "off", check=True).stdout
    gs.wait_workers("off", count=2)
    gs.file("gsuper.ini", gs.config.read_text() + "\n[program:later]\ncommand = sleep 30\nautostart = false\n")
    assert "added later: not started (autostart = false)" in gs.run("-s", "reload", check=True).stdout
    assert [w["state"] for w in gs.workers("later")] == ["STOPPED"]
    gs.run("-s", "stop", check=True)


# -- logfile, stderr_logfile ------------------------------------------------------------------

CHATTY = """\
#!/bin/sh
i=0
while :; do
  i=$((i+1))
  echo "out line $i of $GSUPER_WORKER"
  echo "err line $i" >&2
  sleep 0.01
done
"""


def test_split_logs_rotate_and_reopen(gs):
    gs.file("chatty.sh", CHATTY, 0o755)
    gs.write(
        """
        [program:chatty]
        command = ./chatty.sh
        logfile = out/chatty.out
        stderr_logfile = out/chatty.err
        log_max_bytes = 2K
        log_backups = 2
        startsecs = 0
        """
    )
    gs.start()
    out, err = gs.root / "out" / "chatty.out", gs.root / "out" / "chatty.err"
    wait_for(
        lambda: (gs.root / "out" / "chatty.out.2").exists() and (gs.root / "out" / "chatty.err.2").exists(),
        what="both logs rotated twice",
    )
    assert not (gs.root / "out" / "chatty.out.3").exists()  # log_backups = 2
    assert "err line" not in out.read_text() and "out line" not in err.read_text()
    assert "out line" in out.read_text() and "err line" in err.read_text()
    assert os.path.getsize(gs.root / "out" / "chatty.out.1") <= 2048
    assert not (gs.root / "log" / "chatty.log").exists()
    # logrotate moves the files away, then SIGUSR1: new files are opened at the old paths.
    out.rename(gs.root / "out" / "moved.out")
    err.rename(gs.root / "out" / "moved.err")
    os.kill(gs.master_pid(), signal.SIGUSR1)
    wait_for(lambda: out.exists() and err.exists() and "line" in out.read_text() + err.read_text(), what="reopened logs")
    tail = gs.run("-s", "tail", "-p", "chatty", "-n", "1", check=True).stdout
    assert "out line" in tail
    gs.run("-s", "stop", check=True)


def test_reload_moves_a_log_and_closes_the_old_file(gs):
    gs.write("[program:m]\ncommand = sh -c 'echo hi from $$; exec sleep 30'\nlogfile = a.log\nstartsecs = 0\n")
    gs.start()
    wait_for(lambda: (gs.root / "a.log").exists() and "hi from" in (gs.root / "a.log").read_text(), what="a.log")

    def master_opens(name: str) -> bool:
        fds = Path(f"/proc/{gs.master_pid()}/fd")
        return any(os.path.realpath(fd) == str(gs.root / name) for fd in fds.iterdir())

    assert master_opens("a.log")
    gs.write("[program:m]\ncommand = sh -c 'echo hi from $$; exec sleep 30'\nlogfile = b.log\nstartsecs = 0\n")
    assert "changed m" in gs.run("-s", "reload", check=True).stdout
    wait_for(lambda: (gs.root / "b.log").exists() and "hi from" in (gs.root / "b.log").read_text(), what="b.log")
    assert master_opens("b.log") and not master_opens("a.log")
    gs.run("-s", "stop", check=True)


# -- expansions -----------------------------------------------------------------------------


def test_expansions_per_worker(gs, monkeypatch):
    monkeypatch.setenv("TKA", "shop")
    for i in range(3):
        (gs.root / f"d{i}").mkdir()
    gs.write(
        """
        [program:q]
        command = sh -c 'echo "%(program_name)s_%(process_num)02d %(ENV_TKA)s 100%% %h:%p $PWD $W $H"; echo e$W >&2; exec sleep 9'
        environment = W=w%(process_num)d, H=%(here)s
        directory = d%(process_num)d
        logfile = log/%(program_name)s-%(process_num)d.log
        stderr_logfile = log/%(program_name)s-%(process_num)d.err
        numprocs = 3
        startsecs = 0
        """
    )
    gs.start()
    for i in range(3):
        want = f"q_{i:02d} shop 100% %h:%p {gs.root / f'd{i}'} w{i} {gs.root}"
        wait_for(lambda i=i, want=want: want in gs.log(f"q-{i}"), what=f"worker {i}'s line")
        err = gs.root / "log" / f"q-{i}.err"
        wait_for(lambda i=i, err=err: err.exists() and f"ew{i}" in err.read_text(), what=f"worker {i}'s stderr")
    gs.run("-s", "stop", check=True)


def test_scale_above_numprocs_to_a_missing_per_worker_folder_says_so(gs):
    (gs.root / "d0").mkdir()
    gs.write("[program:w]\ncommand = sleep 30\ndirectory = d%(process_num)d\nstartsecs = 0\n")
    gs.start()
    gs.wait_workers("w")
    gs.run("-s", "scale", "w=2")
    rows = wait_for(lambda: [w for w in gs.workers("w") if w["index"] == 1 and w["last_error"]], what="worker 1's error")
    assert f"no such folder {gs.root / 'd1'}" in rows[0]["last_error"]
    assert gs.workers("w")[0]["state"] == "RUNNING"
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("command = echo %(process_nun)d", "[program:a] command: %(process_nun)d: unknown expansion"),
        ("command = echo %(ENV_NOT_SET_ANYWHERE)s", "command: %(ENV_NOT_SET_ANYWHERE)s: the environment variable"),
        ("command = echo ok\nenvironment = A=%(nope)s", "[program:a] environment: %(nope)s: unknown expansion"),
        ("command = echo ok\ndirectory = d%(process_num)d\nnumprocs = 2", "directory: no such folder"),
        ("command = echo ok\nlogfile = %(program_name)d.log", "logfile: %(program_name)d: 'a' is not a number"),
    ],
)
def test_bad_expansion_is_one_sentence(gs, line, expected):
    (gs.root / "d0").mkdir()
    gs.write(f"[program:a]\n{line}\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    assert expected in one_error_line(proc)


# -- Unicode names ----------------------------------------------------------------------------


def test_unicode_program_and_group_names(gs):
    gs.write(
        """
        [program:test_öäü]
        command = sh -c 'echo "ich bin $GSUPER_PROGRAM"; exec sleep 30'
        startsecs = 0

        [program:队列.1-a]
        command = sleep 30
        startsecs = 0

        [group:grüppe]
        programs = test_öäü, 队列.1-a
        """
    )
    gs.start()
    gs.wait_workers("test_öäü")
    assert {w["program"] for w in gs.status("-g", "grüppe")["workers"]} == {"test_öäü", "队列.1-a"}
    wait_for(lambda: "ich bin test_öäü" in gs.log("test_öäü"), what="the Unicode program's log")
    gs.run("-s", "stop", "-p", "队列.1-a", check=True)
    assert gs.workers("队列.1-a")[0]["state"] == "STOPPED"
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize("name", ["a b", "a/b", "a:b", "ö!"])
def test_names_with_other_characters_are_refused(gs, name):
    gs.write(f"[program:{name}]\ncommand = sleep 1\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    assert "may hold only letters, digits, _ . -" in one_error_line(proc)


# -- the access check, in-process ---------------------------------------------------------------


@as_root
@pytest.mark.parametrize(
    "folder_mode,file_mode,gid,mode,allowed",
    [
        (0o755, 0o644, 4242, os.R_OK, True),
        (0o700, 0o644, 4242, os.R_OK, False),  # cannot search the folder
        (0o750, 0o640, 4242, os.R_OK, True),  # through a supplementary group
        (0o750, 0o640, 4343, os.R_OK, False),
        (0o755, 0o644, 4242, os.X_OK, False),
        (0o755, 0o755, 4343, os.X_OK, True),
    ],
)
def test_user_access_check(open_gs, folder_mode, file_mode, gid, mode, allowed):
    from gsuper.users import User

    folder = open_gs.root / "f"
    folder.mkdir()
    path = folder / "file"
    path.write_text("x")
    os.chown(folder, 0, 4242)
    os.chown(path, 0, 4242)
    folder.chmod(folder_mode)
    path.chmod(file_mode)
    user = User("someone", 54321, 54321, frozenset({54321, gid}), "/nonexistent")
    assert user.can(str(path), mode) is allowed
    assert User("root", 0, 0, frozenset({0}), "/root").can(str(path), mode)


@as_root
def test_non_root_master_may_name_its_own_user(open_gs):
    gs = open_gs
    gs.file("drainer.sh", DRAINER, 0o755)
    gs.write("[program:w]\ncommand = ./drainer.sh\nuser = nobody\nstartsecs = 0\n")
    gs.root.chmod(0o777)  # the master, as nobody, creates run/ and log/ here
    as_nobody = ["setpriv", "--reuid", "nobody", "--regid", str(NOBODY.pw_gid), "--clear-groups", sys.executable, BIN]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*as_nobody, *args, "-c", str(gs.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=gs.root)

    assert run("-s", "start").returncode == 0
    rows = gs.wait_workers("w")
    assert proc_ids(rows[0]["pid"])["Uid"][0] == NOBODY.pw_uid and rows[0]["user"] == "nobody"
    wait_for(lambda: "started 0 as nobody" in gs.log("w"), what="the worker's line")
    assert run("-s", "stop").returncode == 0
    assert "drained 0" in gs.log("w")


def test_a_percent_in_the_config_folder_stays_literal(tmp_path):
    from gsuper import config, runners

    folder = tmp_path / "odd%(name)s%%dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "gsuper.ini").write_text("[program:a]\ncommand = sleep 1\n[program:b]\ncommand = sleep 1\ndirectory = sub\n")
    cfg = config.load(str(folder / "gsuper.ini"))
    a, b = runners.settings(cfg.programs["a"], 0), runners.settings(cfg.programs["b"], 0)
    assert (a.directory, a.logfile) == (str(folder), str(folder / "log" / "a.log"))
    assert b.directory == str(folder / "sub")
