"""Warm PHP workers (`warm = true`, `after_fork`): forked from a template, supervised like any.

Integration tests through the real bin/gsuper: the bootstrap runs once for many workers and
their respawns, after_fork runs in each, random sequences differ, kill -9, max_request and
memory_limit respawn through the template, reload and restart --rolling bring new code, a
broken bootstrap falls back to cold with the reason in status, stop drains, nothing is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from conftest import PHP, wait_for
from gsuper import pss

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(PHP is None, reason="the php CLI is not installed")]

BOOT = """\
<?php
file_put_contents(__DIR__ . '/boots.txt', getmypid() . "\\n", FILE_APPEND | LOCK_EX);
const CODE_VERSION = 'v1';
final class Job
{
    public static function run(): void
    {
        file_put_contents(__DIR__ . '/reqs.txt', getmypid() . ' ' . CODE_VERSION . "\\n", FILE_APPEND | LOCK_EX);
        usleep(5000);
    }
}
"""
AFTER = """\
<?php
file_put_contents(__DIR__ . '/after.txt', getmypid() . ' ' . getenv('GSUPER_WORKER') . ' '
    . mt_rand() . ' ' . rand() . ' ' . posix_getpgrp() . ' ' . posix_getppid() . "\\n", FILE_APPEND | LOCK_EX);
"""


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def warm_config(gs, extra: str = "", numprocs: int = 3) -> None:
    gs.file("boot.php", BOOT)
    gs.file("after.php", AFTER)
    gs.write(f"""
    [program:warm]
    runner = php
    handler = Job::run
    bootstrap = boot.php
    after_fork = after.php
    warm = true
    numprocs = {numprocs}
    usleep = 1000
    stop_timeout = 5
    {extra}
    """)


def test_bootstrap_once_after_fork_in_each_and_kill_9_respawns_through_the_template(gs):
    warm_config(gs, "max_request = 60")
    gs.start()
    rows = gs.wait_workers("warm", count=3)
    master = gs.master_pid()
    assert all(r["warm"] is True and r["template_pid"] for r in rows), rows
    template = rows[0]["template_pid"]
    # max_request recycles: many lives, all forked from the one bootstrapped template.
    wait_for(lambda: len(lines(gs.root / "after.txt")) >= 9, 30, "nine worker lives (max_request recycles)")

    def kill_one() -> int | None:  # a worker may recycle between status and the kill
        pid = next((r["pid"] for r in gs.workers("warm") if r["index"] == 0 and r["state"] == "RUNNING"), None)
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return int(pid)

    victim = wait_for(kill_one, 10, "a worker to kill -9")
    rows = wait_for(
        lambda: [r for r in gs.workers("warm") if r["index"] == 0 and r["pid"] not in (None, victim) and r["state"] == "RUNNING"],
        10,
        "worker 0 respawned after kill -9",
    )
    assert rows[0]["template_pid"] == template
    assert any(r["last_exit"] and r["last_exit"]["reason"] == "max_request" for r in gs.workers("warm")) or any(
        r["restarts"] for r in gs.workers("warm")
    )
    boots = lines(gs.root / "boots.txt")
    assert boots == [[str(template)]], f"the bootstrap ran {len(boots)} times"
    after = lines(gs.root / "after.txt")
    pids = [a[0] for a in after]
    assert len(set(pids)) == len(pids), "after_fork ran twice in one worker"
    assert str(template) not in pids
    # Each forked worker: its own process group, the master as parent, its own random sequences.
    for pid, _index, _mt, _rand, pgrp, _ppid in after:
        assert pgrp == pid

    def forked_children() -> int:
        titles = []
        for child in psutil.Process(master).children():
            try:
                titles.append(" ".join(child.cmdline()))
            except psutil.Error:
                continue
        # (the template and its idle spare are not workers)
        return sum(t.startswith("gsuper: warm#") and "template" not in t and "spare" not in t for t in titles)

    wait_for(lambda: forked_children() == 3, 5, "the three forked workers as the master's children")
    assert len({a[2] for a in after}) == len(after), "mt_rand() sequences repeat across workers"
    assert len({a[3] for a in after}) == len(after), "rand() sequences repeat across workers"
    assert {a[1] for a in after} == {"0", "1", "2"}
    # Requests were served by forked workers, counted in status.
    served = {r[0] for r in lines(gs.root / "reqs.txt")}
    forked = {a[0] for a in lines(gs.root / "after.txt")}  # read after: a recycle may have added one
    assert served <= forked and len(served) >= 3
    # Memory comes from a sample at most 1 s old: a worker just recycled has none yet.
    wait_for(lambda: any((w["pss_bytes"] or 0) > 0 for w in gs.status()["workers"]), 5, "a PSS sample")
    gs.run("-s", "stop", check=True)
    assert not psutil.pid_exists(template) or psutil.Process(template).status() == psutil.STATUS_ZOMBIE


def test_memory_limit_recycles_through_the_template(gs):
    gs.file("boot.php", "<?php\n$GLOBALS['hog'] = [];\n")
    gs.file("after.php", AFTER)
    gs.file("leak.php", "<?php\n$GLOBALS['hog'][] = str_repeat('x', 1 << 20);\n")
    gs.write("""
    [program:leaky]
    runner = php
    script = leak.php
    bootstrap = boot.php
    after_fork = after.php
    warm = true
    memory_limit = 40M
    usleep = 1000
    """)
    gs.start()

    def recycled() -> list[dict]:
        rows = gs.workers("leaky")
        return [r for r in rows if (r["last_exit"] or {}).get("reason") == "memory_limit" and r["state"] == "RUNNING"]

    row = wait_for(
        recycled,
        30,
        "a memory_limit recycle",
    )[0]
    assert row["warm"] is True
    assert len(lines(gs.root / "after.txt")) >= 2
    gs.run("-s", "stop", check=True)


def test_a_template_that_dies_is_rebuilt_and_workers_keep_running(gs):
    warm_config(gs, numprocs=2)
    gs.start()
    rows = gs.wait_workers("warm", count=2)
    old_template, workers = rows[0]["template_pid"], {r["pid"] for r in rows}
    os.kill(old_template, signal.SIGKILL)
    wait_for(lambda: {r["template_pid"] for r in gs.workers("warm")} - {old_template, None}, 15, "a rebuilt template")
    assert {r["pid"] for r in gs.workers("warm")} == workers, "the forked workers went with their template"
    assert len(lines(gs.root / "boots.txt")) == 2
    assert "template" in gs.log() and "died" in gs.log()
    gs.run("-s", "stop", check=True)


def test_reload_and_rolling_restart_build_a_new_template_from_the_current_code(gs):
    warm_config(gs, numprocs=2)
    gs.start()
    first = gs.wait_workers("warm", count=2)[0]["template_pid"]
    boot = gs.root / "boot.php"
    boot.write_text(BOOT.replace("'v1'", "'v2'"))
    warm_config(gs, "environment = CHANGED=1", numprocs=2)
    boot.write_text(BOOT.replace("'v1'", "'v2'"))
    assert gs.run("-s", "reload").returncode == 0
    wait_for(lambda: any(r[1] == "v2" for r in lines(gs.root / "reqs.txt")), 20, "a request served by the new code")
    second = wait_for(lambda: {r["template_pid"] for r in gs.workers("warm")} - {first, None}, 10, "the new template").pop()
    boot.write_text(BOOT.replace("'v1'", "'v3'"))
    assert gs.run("-s", "restart", "--rolling").returncode == 0
    wait_for(lambda: any(r[1] == "v3" for r in lines(gs.root / "reqs.txt")), 20, "a request served by v3")
    rows = gs.wait_workers("warm", count=2)
    assert {r["template_pid"] for r in rows} - {first, second, None}
    assert len(lines(gs.root / "boots.txt")) == 3
    gs.run("-s", "stop", check=True)


def test_a_bootstrap_that_fails_in_the_template_falls_back_to_cold_with_the_reason(gs):
    gs.file(
        "boot.php",
        "<?php\nif (getenv('GSUPER_WORKER') === 'template') { throw new RuntimeException('no database yet'); }\n"
        "final class Job { public static function run(): void { usleep(5000); } }\n",
    )
    gs.write("""
    [program:fallback]
    runner = php
    handler = Job::run
    bootstrap = boot.php
    warm = true
    numprocs = 2
    """)
    gs.start()
    rows = gs.wait_workers("fallback", count=2)
    assert all(r["warm"] is False for r in rows)
    assert "no database yet" in rows[0]["warm_error"]
    assert "start cold" in gs.log()
    text = gs.run("-s", "status", check=True).stdout
    assert "warm: false" in text and "no database yet" in text
    gs.run("-s", "stop", check=True)


def test_warm_and_after_fork_are_php_only(gs):
    gs.write("""
    [program:sh]
    command = sleep 5
    warm = true
    """)
    proc = gs.run("-s", "check")
    assert proc.returncode == 2 and "[program:sh] warm: only for runner = php" in proc.stderr


def test_pss_of_a_process_is_at_most_its_rss():
    mine = pss.process_pss(os.getpid())
    assert mine is not None and 0 < mine <= psutil.Process().memory_info().rss
    assert pss.process_pss(2**22 + 12345) is None


LARAVEL = Path(__file__).resolve().parents[1] / "examples" / "laravel"


@pytest.mark.skipif(not Path("/usr/share/php/Illuminate/autoload.php").exists(), reason="php-laravel-framework is not installed")
def test_the_laravel_bridge_runs_queued_jobs_warm_with_laravels_retries(gs, redis_server):
    done = gs.root / "done"
    done.mkdir()
    gs.write(f"""
    [program:laravel]
    runner = php
    handler = Gsuper\\Laravel\\Bridge::run
    bootstrap = {LARAVEL / "bootstrap.php"}
    after_fork = {LARAVEL / "after_fork.php"}
    warm = true
    numprocs = 2
    stop_timeout = 5
    environment = REDIS_PORT={redis_server.port}, DONE_DIR={done}
    """)
    gs.start()
    rows = gs.wait_workers("laravel", count=2)
    assert all(r["warm"] for r in rows)

    def push(n: int, fail_times: int = 0, prefix: str = "") -> None:
        env = {**os.environ, "REDIS_PORT": str(redis_server.port), "JOB_PREFIX": prefix}
        subprocess.run([PHP, str(LARAVEL / "push.php"), str(n), str(fail_times)], check=True, env=env, timeout=30)

    push(10)
    wait_for(lambda: len(list(done.iterdir())) == 10, 20, "ten jobs done")
    # Laravel's retries: a job that fails on its first attempt runs again and succeeds.
    push(1, fail_times=1, prefix="retry")
    attempts = wait_for(lambda: (done / "retry1").exists() and (done / "retry1").read_text().split()[1], 20, "the retried job")
    assert attempts == "2"
    # A worker killed -9 is forked again from the booted app and takes the next jobs.
    victim = rows[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: any(
            r["pid"] not in (None, victim) and r["index"] == 0 and r["state"] == "RUNNING" for r in gs.workers("laravel")
        ),
        10,
        "respawn",
    )
    push(10, prefix="after")
    wait_for(lambda: len(list(done.glob("after*"))) == 10, 20, "ten more jobs done")
    servers = {p.read_text().split()[0] for p in done.glob("after*")}
    assert str(victim) not in servers
    assert redis_server.llen("queues:default") == 0
    gs.run("-s", "stop", check=True)


def test_cold_php_workers_use_an_opcache_file_cache_under_rundir(gs):
    gs.file("job.php", "<?php\nusleep(2000);\n")
    gs.write("""
    [program:cached]
    runner = php
    script = job.php
    [program:plain]
    runner = php
    script = job.php
    opcache = false
    """)
    gs.start()
    gs.wait_workers("cached")
    gs.wait_workers("plain")
    assert not (gs.root / "run" / "opcache" / "plain").exists()
    folder = gs.root / "run" / "opcache" / "cached"
    assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
    wait_for(lambda: any(p.suffix == ".bin" for p in folder.rglob("*")), 10, "compiled scripts in the file cache")
    gs.run("-s", "stop", check=True)
