"""Operations through the real command line: groups and priority, reload (command and SIGHUP),
rolling restart, scale, tail across rotation, and stop with progress."""

import os
import re
import signal
import sys
import threading
import time

import psutil
import pytest

from conftest import ROOT, alive, wait_for

sys.path.insert(0, str(ROOT))
from gsuper import control  # noqa: E402

pytestmark = pytest.mark.timeout(90)

PY = sys.executable

# A daemon that notes its start and its (graceful) stop in marks.txt: `python svc.py NAME`.
SVC = """
import os, signal, sys, time
name = sys.argv[1]
def note(what):
    with open("marks.txt", "a") as fh:
        fh.write(f"{what} {name} {os.environ.get('GSUPER_WORKER')}\\n")
def bye(*_):
    note("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
note("start")
while True:
    time.sleep(1)
"""

# One request of a Python-runner consumer: begin/end markers around a short piece of work.
CONSUMER = """
import os, time
rid = f"{os.getpid()}:{time.monotonic_ns()}"
with open("requests.txt", "a") as fh:
    fh.write(f"begin {rid}\\n")
time.sleep(0.15)
with open("requests.txt", "a") as fh:
    fh.write(f"end {rid} {time.time()}\\n")
"""


def pids(gs, program):
    """{index: pid} of the program's live workers."""
    return {w["index"]: w["pid"] for w in gs.workers(program) if w["pid"] is not None}


def front_pids(gs):
    return {w["pid"] for w in gs.status("-g", "front")["workers"] if w["pid"] is not None}


def marks(gs):
    path = gs.root / "marks.txt"
    return path.read_text().splitlines() if path.exists() else []


def one_error_line(proc, code, fragment):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# -- groups and priority -----------------------------------------------------------------------


def test_groups_act_only_on_their_programs(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    [program:b]
    command = sleep 1000
    numprocs = 2
    startsecs = 0.2
    [program:c]
    command = sleep 1000
    startsecs = 0.2
    [group:front]
    programs = a, b
    [group:back]
    programs = c
    """)
    gs.start()
    for name in "abc":
        gs.wait_workers(name)
    c_pid = pids(gs, "c")

    assert sorted({w["program"] for w in gs.status("-g", "front")["workers"]}) == ["a", "b"]
    table = gs.run("-s", "status", "-g", "back", check=True).stdout
    assert re.search(r"^c\s", table, re.M) and not re.search(r"^[ab]\s", table, re.M)

    out = gs.run("-s", "stop", "-g", "front", check=True).stdout
    assert "stopped a, b" in out
    assert {w["state"] for w in gs.workers() if w["program"] != "c"} == {"STOPPED"}
    assert pids(gs, "c") == c_pid

    out = gs.run("-s", "start", "-g", "front", check=True).stdout
    assert "a: 1 worker started" in out and "b: 2 workers started" in out
    gs.wait_workers("a")
    gs.wait_workers("b")
    old = front_pids(gs)
    assert pids(gs, "c") == c_pid

    gs.run("-s", "restart", "-g", "front", check=True)
    gs.wait_workers("a")
    gs.wait_workers("b")
    new = front_pids(gs)
    assert len(new) == 3 and not old & new
    assert pids(gs, "c") == c_pid

    out = gs.run("-s", "restart", "--rolling", "-g", "front", check=True).stdout
    assert "a: 1 workers replaced" in out and "b: 2 workers replaced" in out
    rolled = front_pids(gs)
    assert len(rolled) == 3 and not rolled & new
    assert pids(gs, "c") == c_pid and gs.workers("c")[0]["restarts"] == 0
    assert len(gs.status("-g", "front", "-g", "back")["workers"]) == 4

    bad = gs.run("-s", "restart", "-g", "nope")
    one_error_line(bad, 2, "no group named 'nope'")


def test_priority_orders_start_ascending_and_stop_descending(gs):
    gs.file("svc.py", SVC)
    # File order and name order both differ from priority order (db 1, app 5, web 10).
    gs.write(f"""
    [gsuper]
    loglevel = debug
    [program:web]
    command = {PY} svc.py web
    priority = 10
    startsecs = 0.2
    [program:app]
    command = {PY} svc.py app
    priority = 5
    startsecs = 0.2
    [program:db]
    command = {PY} svc.py db
    priority = 1
    startsecs = 0.2
    """)
    out = gs.start().stdout
    assert [ln.split(":")[0] for ln in out.splitlines() if "started" in ln and "master" not in ln] == ["db", "app", "web"]
    wait_for(lambda: len(marks(gs)) == 3, what="three start marks")
    log = gs.log()
    spawned = [log.index(f"{name}#0: spawned pid") for name in ("db", "app", "web")]
    assert spawned == sorted(spawned), log
    gs.run("-s", "stop", check=True)
    assert [m for m in marks(gs) if m.startswith("stop")] == ["stop web 0", "stop app 0", "stop db 0"]
    log = gs.log()
    exited = [log.index(f"{name}#0 (pid") for name in ("web", "app", "db")]
    assert exited == sorted(exited)


# -- reload --------------------------------------------------------------------------------------


RELOAD_V1 = """
[program:keep]
command = sleep 1000
numprocs = 2
startsecs = 0.2
[program:gone]
command = {py} svc.py gone
startsecs = 0.2
[program:change]
command = sh -c 'echo "X=$X"; exec sleep 1000'
numprocs = 2
startsecs = 0.2
environment = X=1
[program:grow]
command = sleep 1000
startsecs = 0.2
"""


def test_reload_adds_removes_changes_scales_and_keeps(gs):
    gs.file("svc.py", SVC)
    gs.write(RELOAD_V1.format(py=PY))
    gs.start()
    for name in ("keep", "gone", "change", "grow"):
        gs.wait_workers(name)
    keep, gone, change, grow = (pids(gs, n) for n in ("keep", "gone", "change", "grow"))
    wait_for(lambda: gs.log("change").count("X=1") == 2, what="change's first output")

    v2 = (
        RELOAD_V1.format(py=PY)
        .replace("X=1", "X=2")
        .replace(f"[program:gone]\ncommand = {PY} svc.py gone\nstartsecs = 0.2\n", "")
    )
    v2 = v2.replace("[program:grow]\n", "[program:grow]\nnumprocs = 3\n")
    v2 += "[program:fresh]\ncommand = sleep 1000\nstartsecs = 0.2\n"
    gs.write(v2)
    out = gs.run("-s", "reload", check=True).stdout
    for line in (
        "unchanged keep",
        "removed gone: stopped",
        "changed change: 2 workers replaced one at a time",
        "scaled grow: 1 -> 3 workers",
        "added fresh: 1 workers started",
    ):
        assert line in out, out
    assert pids(gs, "keep") == keep
    assert "stop gone 0" in marks(gs) and not alive(gone[0])  # stopped gracefully
    assert gs.workers("gone") == []
    new_change = pids(gs, "change")
    assert len(new_change) == 2 and not set(new_change.values()) & set(change.values())
    assert not any(alive(p) for p in change.values())
    wait_for(lambda: gs.log("change").count("X=2") == 2, what="the changed environment")
    grown = gs.wait_workers("grow", count=3)
    assert pids(gs, "grow")[0] == grow[0] and len(grown) == 3
    assert all(w["restarts"] == 0 for w in gs.workers("grow"))
    gs.wait_workers("fresh")

    # SIGHUP does the same; the changes go to the master log. A numprocs-only change back down.
    v3 = v2.replace("[program:grow]\nnumprocs = 3\n", "[program:grow]\n").replace(
        "[program:fresh]\ncommand = sleep 1000\nstartsecs = 0.2\n", ""
    )
    gs.write(v3)
    fresh = pids(gs, "fresh")
    os.kill(gs.master_pid(), signal.SIGHUP)
    wait_for(lambda: "reload: removed fresh: stopped" in gs.log(), what="the SIGHUP reload")
    wait_for(lambda: "reload: scaled grow: 3 -> 1 workers" in gs.log(), what="the SIGHUP scale")
    assert pids(gs, "grow") == {0: grow[0]} and pids(gs, "keep") == keep and pids(gs, "change") == new_change
    assert gs.workers("fresh") == [] and not alive(fresh[0])

    # Settings of a stopped program change at rest, numprocs too; its next start follows them.
    gs.run("-s", "stop", "-p", "keep", check=True)
    gs.write(v3.replace("numprocs = 2", "numprocs = 1", 1).replace("command = sleep 1000", "command = sleep 999", 1))
    out = gs.run("-s", "reload", check=True).stdout
    assert "changed keep: new settings (not running)" in out
    gs.run("-s", "start", "-p", "keep", check=True)
    rows = gs.wait_workers("keep")
    assert len(rows) == 1 and psutil.Process(rows[0]["pid"]).cmdline() == ["sleep", "999"]


def test_reload_refuses_an_invalid_config(gs):
    gs.file("svc.py", SVC)
    gs.write(RELOAD_V1.format(py=PY))
    gs.start()
    for name in ("keep", "gone", "change", "grow"):
        gs.wait_workers(name)
    before = {w["pid"] for w in gs.workers()}
    good = gs.config.read_text()

    try:
        refused(gs, good)
    finally:
        gs.config.write_text(good)  # so that the fixture can end the master whatever happened
    assert {w["pid"] for w in gs.workers()} == before
    assert {w["state"] for w in gs.workers()} == {"RUNNING"}


def refused(gs, good):
    before = {w["pid"] for w in gs.workers()}
    gs.config.write_text(good.replace("numprocs = 2", "numprocs = 2\nbogus = 1", 1))
    bad = gs.run("-s", "reload")
    one_error_line(bad, 2, "[program:keep] bogus: unknown key")
    assert str(gs.config) in bad.stderr

    gs.config.write_text(good.replace("environment = X=1", "environment = X=1\nstop_timeout = lots"))
    bad = gs.run("-s", "reload")
    one_error_line(bad, 2, "[program:change]")

    # SIGHUP with a broken file: refused, logged, nothing touched.
    gs.config.write_text(good + "[program:broken]\nrunner = cobol\n")
    os.kill(gs.master_pid(), signal.SIGHUP)
    wait_for(lambda: "reload refused" in gs.log(), what="the refused SIGHUP reload")
    assert "[program:broken] runner" in gs.log()
    gs.config.write_text(good)  # status reads the file too
    assert {w["pid"] for w in gs.workers()} == before

    # The master tells a config error apart (the CLI then exits 2): here its file is gone.
    gs.config.write_text(good.replace("X=1", "X=3"))
    sock = gs.root / "run" / "gsuper.sock"
    os.replace(gs.config, gs.root / "elsewhere.ini")
    reply = control.request(str(sock), {"cmd": "reload"}, 10)
    assert reply["ok"] is False and reply.get("config_error") is True and "no such configuration file" in reply["error"]
    os.replace(gs.root / "elsewhere.ini", gs.config)


# -- rolling restart -------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples the master's status document as fast as it answers, until stopped."""

    def __init__(self, sockfile):
        super().__init__(daemon=True)
        self.sockfile = sockfile
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                reply = control.request(self.sockfile, {"cmd": "status"}, 5)
            except control.ControlError:
                continue
            self.samples.append(reply["status"]["workers"])
            time.sleep(0.01)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.halt.set()
        self.join(10)


def requests_of(gs):
    """({pid: [begun ids]}, {ended ids})."""
    begun, ended = {}, set()
    path = gs.root / "requests.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, rid = line.split()[:2]
        if kind == "begin":
            begun.setdefault(int(rid.split(":")[0]), []).append(rid)
        else:
            ended.add(rid)
    return begun, ended


def consumer_config(gs, numprocs=3, extra=""):
    gs.file("consumer.py", CONSUMER)
    gs.write(f"""
    [program:consumer]
    runner = python
    interpreter = {PY}
    script = consumer.py
    numprocs = {numprocs}
    stop_timeout = 10
    {extra}
    [program:other]
    command = sleep 1000
    startsecs = 0.2
    """)


def test_rolling_restart_keeps_capacity_and_cuts_no_request(gs):
    consumer_config(gs)
    gs.start()
    gs.wait_workers("consumer", count=3)
    old = pids(gs, "consumer")
    other = pids(gs, "other")
    wait_for(lambda: len(requests_of(gs)[0]) == 3, what="every worker serving")
    with Sampler(str(gs.root / "run" / "gsuper.sock")) as sampler:
        out = gs.run("-s", "restart", "--rolling", "-p", "consumer", check=True).stdout
    assert "consumer: 3 workers replaced one at a time" in out
    assert len(sampler.samples) >= 5
    assert any(len([w for w in rows if w["program"] == "consumer" and w["pid"]]) == 4 for rows in sampler.samples)
    for rows in sampler.samples:
        mine = [w for w in rows if w["program"] == "consumer"]
        running = [w for w in mine if w["state"] == "RUNNING"]
        assert len(running) >= 3, mine
        assert len([w for w in mine if w["pid"] is not None]) <= 4, mine  # one at a time
    new = pids(gs, "consumer")
    assert sorted(new) == [0, 1, 2] and not set(new.values()) & set(old.values())
    assert not any(alive(p) for p in old.values())
    assert pids(gs, "other") == other
    begun, ended = requests_of(gs)
    for pid in old.values():
        assert begun.get(pid) and set(begun[pid]) <= ended, f"a request of {pid} was cut off"
    assert gs.log().count("exited: stopped, code 0") == 3


def test_rolling_waits_for_the_ready_report_of_a_slow_bootstrap(gs):
    # The bootstrap takes far longer than startsecs: the old worker serves until the new is ready.
    gs.file(
        "boot.py",
        """
    import os, time
    time.sleep(1.2)
    with open("booted.txt", "a") as fh:
        fh.write(f"{os.getpid()} {time.time()}\\n")
    """,
    )
    consumer_config(gs, numprocs=1, extra="bootstrap = boot.py\n    startsecs = 0.2")
    gs.start()
    old = wait_for(lambda: pids(gs, "consumer").get(0), what="the first worker")
    wait_for(lambda: requests_of(gs)[0].get(old), what="the first request")
    gs.run("-s", "restart", "--rolling", "-p", "consumer", check=True)
    new = pids(gs, "consumer")[0]
    booted = dict(ln.split() for ln in (gs.root / "booted.txt").read_text().splitlines())
    assert str(new) in booted, "the rolling restart ended before the new worker was ready"
    last_end = max(
        float(ln.split()[2]) for ln in (gs.root / "requests.txt").read_text().splitlines() if ln.startswith(f"end {old}:")
    )
    assert last_end >= float(booted[str(new)]) - 0.05, "the old worker was stopped before the new one was ready"
    begun, ended = requests_of(gs)
    assert set(begun[old]) <= ended


def test_rolling_replacement_that_cannot_come_up_keeps_the_old_worker(gs):
    gs.file("boot.py", "READY = True\n")
    consumer_config(gs, numprocs=2, extra="bootstrap = boot.py\n    startretries = 1")
    gs.start()
    gs.wait_workers("consumer", count=2)
    old = pids(gs, "consumer")

    # The bootstrap now fails: restart --rolling gives up at the first replacement.
    gs.file("boot.py", "raise RuntimeError('no database')\n")
    failed = gs.run("-s", "restart", "--rolling", "-p", "consumer")
    one_error_line(failed, 1, "did not come up")
    assert "no database" in failed.stderr and "kept the old worker" in failed.stderr
    assert pids(gs, "consumer") == old and {w["state"] for w in gs.workers("consumer")} == {"RUNNING"}

    # A reload to a script whose bootstrap fails: the change is refused, reported, old kept.
    gs.file("boot.py", "READY = True\n")
    gs.file("boot2.py", "raise LookupError('missing secret')\n")
    gs.config.write_text(gs.config.read_text().replace("bootstrap = boot.py", "bootstrap = boot2.py"))
    out = gs.run("-s", "reload")
    assert "changed consumer: rolling restart stopped" in out.stdout and "missing secret" in out.stdout, out.stdout
    one_error_line(out, 1, "the reload could not apply every change: consumer: consumer#0 did not come up")
    assert pids(gs, "consumer") == old and {w["state"] for w in gs.workers("consumer")} == {"RUNNING"}
    assert len(gs.workers("consumer")) == 2
    served = {p: len(requests_of(gs)[0].get(p, [])) for p in old.values()}
    wait_for(lambda: all(len(requests_of(gs)[0].get(p, [])) > served[p] for p in old.values()), what="the old workers serving")


# -- scale -----------------------------------------------------------------------------------


def test_scale_up_and_down(gs):
    gs.file("svc.py", SVC)
    gs.write(f"""
    [program:pool]
    command = {PY} svc.py pool
    numprocs = 2
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("pool", count=2)
    first = pids(gs, "pool")
    out = gs.run("-s", "scale", "pool=4", check=True).stdout
    assert "pool: 2 -> 4 workers" in out
    gs.wait_workers("pool", count=4)
    four = pids(gs, "pool")
    assert sorted(four) == [0, 1, 2, 3] and {i: four[i] for i in (0, 1)} == first

    out = gs.run("-s", "scale", "pool=1", check=True).stdout
    assert "pool: 4 -> 1 workers" in out
    assert pids(gs, "pool") == {0: first[0]} and len(gs.workers("pool")) == 1
    assert sorted(m for m in marks(gs) if m.startswith("stop")) == ["stop pool 1", "stop pool 2", "stop pool 3"]
    assert not any(alive(four[i]) for i in (1, 2, 3))

    for arg, code, fragment in (
        ("pool=x", 2, "scale takes NAME=N"),
        ("pool", 2, "scale takes NAME=N"),
        ("pool=-1", 2, "scale takes NAME=N"),
        ("nope=3", 2, "no program named 'nope'"),
        ("pool=5000", 2, "from 0 to 1000"),
    ):
        one_error_line(gs.run("-s", "scale", arg), code, fragment)
    assert pids(gs, "pool") == {0: first[0]}


# -- tail ------------------------------------------------------------------------------------


def test_tail_last_lines(gs):
    gs.write("""
    [program:twelve]
    command = sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "row $i"; done; exec sleep 1000'
    startsecs = 0.2
    """)
    gs.start()
    wait_for(lambda: "row 12" in gs.log("twelve"), what="twelve rows")
    out = gs.run("-s", "tail", "-p", "twelve", "-n", "5", check=True).stdout
    assert re.findall(r"row (\d+)", out) == ["8", "9", "10", "11", "12"] and out.count("\n") == 5
    master = gs.run("-s", "tail", "-n", "3", check=True).stdout  # no -p: the master's log
    assert "INFO master" in master and 1 <= master.count("\n") <= 3
    one_error_line(gs.run("-s", "tail", "-p", "nope"), 2, "no program named 'nope'")
    one_error_line(gs.run("-s", "tail", "-p", "twelve", "-n", "x"), 2, "-n takes a number")


def inode_of(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:  # between the rename and the new file
        return None


def first_line(path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text.split("\n", 1)[0] if "\n" in text else None


def test_tail_follows_across_rotation(gs):
    gs.file(
        "counter.py",
        """
    import sys, time
    n = 0
    while True:
        n += 1
        sys.stdout.write(f"line {n} " + "." * 40 + "\\n")
        sys.stdout.flush()
        time.sleep(0.004)
    """,
    )
    gs.write(f"""
    [gsuper]
    log_max_bytes = 20K
    log_backups = 2
    [program:counter]
    command = {PY} counter.py
    startsecs = 0.2
    """)
    gs.start()
    log = gs.root / "log" / "counter.log"
    wait_for(lambda: "line 20 " in gs.log("counter"), what="some lines")
    with gs.popen("-s", "tail", "-p", "counter", "-n", "5", "-f") as tail:
        seen = []

        def read():
            for line in tail.stdout:
                seen.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_for(lambda: len(seen) >= 5, what="the last lines")
            inode = wait_for(lambda: inode_of(log), what="the log")
            wait_for(lambda: inode_of(log) not in (None, inode), 20, what="a rotation")
            after = int(re.search(r"line (\d+)", wait_for(lambda: first_line(log), what="a new line")).group(1))
            wait_for(lambda: any(f"line {after} " in ln for ln in list(seen)), 10, what="a line written after the rotation")
            wait_for(lambda: any(f"line {after + 30} " in ln for ln in list(seen)), 10, what="more lines after it")
            assert tail.poll() is None
        finally:
            os.kill(tail.pid, signal.SIGTERM)
            tail.wait(10)
            reader.join(10)
        err = tail.stderr.read()
    numbers = [int(m.group(1)) for ln in seen if (m := re.search(r"line (\d+) ", ln))]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "lines lost or repeated by tail -f"
    assert "Traceback" not in err


# -- stop with progress ----------------------------------------------------------------------


def test_stop_shows_progress_on_a_pipe(gs):
    gs.file(
        "slowstop.py",
        """
    import os, signal, sys, time
    def bye(*_):
        time.sleep(float(os.environ.get("DELAY", "1.5")))
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    while True:
        time.sleep(1)
    """,
    )
    gs.write(f"""
    [program:slowstop]
    command = {PY} slowstop.py
    numprocs = 2
    startsecs = 0.2
    [program:laggard]
    command = {PY} slowstop.py
    environment = DELAY=4
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("slowstop")
    gs.wait_workers("laggard")
    started = time.monotonic()
    out = gs.run("-s", "stop", "-p", "slowstop", check=True).stdout
    assert time.monotonic() - started >= 1.4
    lines = out.splitlines()
    assert lines[0] == "stopping: 2 workers left" and lines[-1] == "stopped slowstop", out
    assert all(re.fullmatch(r"stopping: \d+ workers? left", ln) for ln in lines[:-1]), out
    assert "\r" not in out and "\033" not in out
    assert gs.workers("laggard")[0]["state"] == "RUNNING"

    gs.run("-s", "start", "-p", "slowstop", check=True)
    gs.wait_workers("slowstop")
    with gs.popen("-s", "stop") as stop:
        wait_for(lambda: gs.workers("laggard")[0]["state"] == "STOPPING", what="the stop under way")
        # While the master stops, nothing new is started.
        for args in (["scale", "slowstop=3"], ["restart", "--rolling"]):
            one_error_line(gs.run("-s", *args), 1, "the master is stopping")
        out, _ = stop.communicate(timeout=30)
    assert stop.returncode == 0
    lines = out.splitlines()
    assert lines[0] == "stopping: 3 workers left" and lines[-1] == "stopped", out
    assert "stopping: 1 worker left" in lines
    assert all(re.fullmatch(r"stopping: [123] workers? left", ln) for ln in lines[:-1]), out
    assert not gs.running()


@pytest.mark.timeout(90)
def test_stop_during_a_rolling_restart_starts_no_more_replacements(gs):
    # Requests last until the test releases them, so the rolling restart is surely busy stopping
    # the first old worker when the stop comes (a request of fixed length could end just then,
    # and the roll would start its next replacement before the stop arrived); it must not go on
    # to start the next replacement once the master is stopping.
    release = gs.root / "release"
    gs.file("boot.py", "import os\nwith open('boots.txt', 'a') as fh:\n    fh.write(f'{os.getpid()}\\n')\n")
    gs.file("req.py", f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n")
    gs.write("""
    [program:rolling]
    runner = python
    script = req.py
    bootstrap = boot.py
    numprocs = 3
    """)
    gs.start()
    gs.wait_workers("rolling", timeout=20)
    with gs.popen("-s", "restart", "--rolling") as rolling:
        wait_for(lambda: any(w["state"] == "STOPPING" for w in gs.workers("rolling")), 15, "the first old worker stopping")
        with gs.popen("-s", "stop") as stop:
            wait_for(lambda: "stopping every program" in gs.log(), 15, "the master to begin its stop")
            release.write_text("")
            assert stop.wait(30) == 0, stop.stderr.read() if stop.stderr else ""
        _out, err = rolling.communicate(timeout=30)
    assert not gs.running()
    boots = (gs.root / "boots.txt").read_text().split()
    assert len(boots) == 4, f"replacements started after the stop began: {boots}"
    assert rolling.returncode != 0 and ("stopping" in err or "closed the connection" in err), err
