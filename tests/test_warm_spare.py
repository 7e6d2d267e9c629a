"""Warm workers, the rest of issue 15: the pre-forked spare, request_timeout and stderr_logfile
of forked workers, and per-worker expansions in their environment.

Integration tests through the real bin/gsuper (test_warm.py holds the first part).
"""

from __future__ import annotations

import json
import os
import re
import signal

import psutil
import pytest
from test_warm import lines, warm_config

from conftest import PHP, wait_for

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(PHP is None, reason="the php CLI is not installed")]


def spares(master: int, program: str = "warm") -> list[psutil.Process]:
    """The master's idle spare children of `program` (by their process title)."""
    found = []
    for child in psutil.Process(master).children():
        try:
            if child.cmdline()[:1] == [f"gsuper: {program}#spare"] and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def one_spare(master: int, not_pid: int | None = None) -> psutil.Process:
    """Wait for exactly one spare (other than `not_pid`) and return it."""
    return wait_for(
        lambda: next((s for s in [*spares(master)][:1] if len(spares(master)) == 1 and s.pid != not_pid), None),
        10,
        "one spare worker",
    )


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_one_spare_waits_uncounted_takes_the_next_slot_and_ends_with_its_template(gs):
    warm_config(gs, numprocs=2)
    gs.start()
    rows = gs.wait_workers("warm", count=2)
    master = gs.master_pid()
    assert master is not None
    spare = one_spare(master)
    # Not a worker: status counts the two slots; in its own group; in the takeover record.
    assert spare.pid not in {r["pid"] for r in gs.workers("warm")}
    assert len(gs.workers("warm")) == 2
    assert os.getpgid(spare.pid) == spare.pid
    record = json.loads((gs.root / "run" / "workers.json").read_text())
    wait_for(
        lambda: spare.pid in {w["pgid"] for w in json.loads((gs.root / "run" / "workers.json").read_text())["workers"]},
        5,
        f"the spare in the takeover record ({record})",
    )
    # kill -9 of a worker: the spare takes its slot (no fork on the way); a new spare follows.
    victim = next(r for r in rows if r["index"] == 0)["pid"]
    os.kill(victim, signal.SIGKILL)
    def replaced() -> dict | None:
        rows = gs.workers("warm")
        return next((r for r in rows if r["index"] == 0 and r["pid"] not in (None, victim) and r["state"] == "RUNNING"), None)

    row = wait_for(replaced, 10, "worker 0 replaced")
    assert row["pid"] == spare.pid, "the replacement was not the spare"
    after = gs.root / "after.txt"
    wait_for(lambda: any(a[0] == str(spare.pid) and a[1] == "0" for a in lines(after)), 5, "after_fork in the spare")
    second = one_spare(master, not_pid=spare.pid)
    # A spare that dies idle is replaced; the slots do not notice.
    workers = {r["pid"] for r in gs.workers("warm")}
    second.kill()
    third = one_spare(master, not_pid=second.pid)
    assert {r["pid"] for r in gs.workers("warm")} == workers
    assert all(r["restarts"] == 0 for r in gs.workers("warm") if r["index"] == 1)
    # A reload builds a new template: the old spare goes with the old template, never serves.
    template = gs.workers("warm")[0]["template_pid"]
    warm_config(gs, "environment = CHANGED=1", numprocs=2)
    assert gs.run("-s", "reload").returncode == 0
    wait_for(lambda: {r["template_pid"] for r in gs.workers("warm")} - {template, None}, 20, "the new template")
    wait_for(lambda: gone(third.pid), 10, "the old template's spare ended")
    fresh = one_spare(master, not_pid=third.pid)
    assert psutil.Process(fresh.pid).ppid() == master
    assert all(r["pid"] != third.pid for r in gs.workers("warm"))
    # Stop ends the spare with the template (leak_check: nothing left).
    gs.run("-s", "stop", check=True)
    assert gone(fresh.pid)


GUARDED = r"""<?php
final class Job
{
    private static bool $first = true;

    public static function run(): void
    {
        if (self::$first) {
            self::$first = false;
            file_put_contents(__DIR__ . '/env.txt', getmypid() . ' ' . getenv('GSUPER_WORKER') . ' ' . getenv('SLOT')
                . ' ' . getenv('GSUPER_PROGRAM') . "\n", FILE_APPEND | LOCK_EX);
            fwrite(STDERR, 'to-stderr ' . getmypid() . "\n");
            fwrite(STDOUT, 'to-stdout ' . getmypid() . "\n");
            if (getenv('GSUPER_WORKER') === '0' && !file_exists(__DIR__ . '/hung-once')) {
                touch(__DIR__ . '/hung-once');
                sleep(60); // ended by request_timeout
            }
        }
        usleep(5000);
    }
}
"""
AFTER_ENV = """<?php
file_put_contents(__DIR__ . '/after.txt', getmypid() . ' ' . getenv('SLOT') . "\\n", FILE_APPEND | LOCK_EX);
"""


def test_forked_workers_get_request_timeout_stderr_logfile_and_their_own_expansions(gs):
    gs.file("boot.php", GUARDED)
    gs.file("after.php", AFTER_ENV)
    gs.write("""
    [program:guarded]
    runner = php
    handler = Job::run
    bootstrap = boot.php
    after_fork = after.php
    warm = true
    numprocs = 3
    usleep = 1000
    request_timeout = 0.5
    environment = SLOT=slot-%(process_num)02d
    stderr_logfile = log/%(program_name)s-%(process_num)d.err
    stop_timeout = 5
    """)
    gs.start()

    def replaced() -> list[dict] | None:
        rows = gs.workers("guarded")
        zero = next((r for r in rows if r["index"] == 0), None)
        ok = zero is not None and (zero["last_exit"] or {}).get("reason") == "request_timeout" and zero["state"] == "RUNNING"
        return rows if ok and len(rows) == 3 and all(r["requests"] > 0 for r in rows) else None

    rows = wait_for(replaced, 30, "the hung warm worker ended at its deadline and replaced", 0.1)
    assert all(r["warm"] is True for r in rows), rows
    zero = next(r for r in rows if r["index"] == 0)
    assert zero["last_exit"] == {"reason": "request_timeout", "code": -9}
    found = re.search(r"guarded#0 \(pid (\d+)\): request 1 ran (\d+\.\d+)s, over request_timeout 0.5s: SIGKILL", gs.log())
    assert found, gs.log()
    assert 0.5 <= float(found.group(2)) < 3.0
    # Per-worker expansions and GSUPER_WORKER, set before after_fork; not the template's (0).
    env = lines(gs.root / "env.txt")
    assert {(e[1], e[2]) for e in env} == {("0", "slot-00"), ("1", "slot-01"), ("2", "slot-02")}, env
    assert all(e[3] == "guarded" for e in env)
    after = {a[0]: a[1] for a in lines(gs.root / "after.txt")}
    assert all(after[e[0]] == e[2] for e in env), (after, env)
    # stderr lands in each worker's stderr_logfile, stdout in the program's log.
    for index in range(3):
        pids = {e[0] for e in env if e[1] == str(index)}
        err = gs.root / "log" / f"guarded-{index}.err"
        wait_for(
            lambda err=err, pids=pids: err.exists() and all(f"to-stderr {p}" in err.read_text() for p in pids),
            5,
            f"stderr of worker {index}",
        )
        assert "to-stdout" not in err.read_text()
    out = wait_for(lambda: [p for p in (gs.root / "log").glob("guarded*.log")], 5, "the program's log")
    text = "".join(p.read_text() for p in out)
    assert "to-stdout" in text and "to-stderr" not in text
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize("how", ["master kill -9", "-s exit"])
def test_the_spare_ends_with_a_killed_master_and_with_exit(gs, how):
    warm_config(gs, numprocs=1)
    gs.start()
    rows = gs.wait_workers("warm", count=1)
    master = gs.master_pid()
    assert master is not None
    spare = one_spare(master)
    everything = [master, rows[0]["pid"], rows[0]["template_pid"], spare.pid]
    if how == "-s exit":
        gs.run("-s", "exit", check=True)
    else:
        os.kill(master, signal.SIGKILL)  # the spare's parent-death signal (and its socket's EOF)
    wait_for(lambda: all(gone(p) for p in everything), 10, "the master, worker, template and spare gone")
