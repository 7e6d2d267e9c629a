"""Fast tier: the tree sampler of gsuper.memsample on real `sleep` trees started by the test.

The root is a small Python process that starts and ends `sleep` children on command (one line
on its stdin, one reply line), so each test knows exactly which processes the tree holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from gsuper.memsample import PAGE_BYTES, TreeSampler, _open, proc_table, tree_members

ROOT_SCRIPT = textwrap.dedent("""\
    import subprocess, sys, threading
    kids = {}
    done = threading.Event()
    def from_a_thread(started):
        p = subprocess.Popen(["sleep", "1000"])
        kids[p.pid] = p
        started.append(p.pid)
        done.wait()  # alive: the child stays in this thread's children file
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "spawn":
            p = subprocess.Popen(["sleep", "1000"])
            kids[p.pid] = p
            print(p.pid, flush=True)
        elif cmd == "thread":
            started = []
            t = threading.Thread(target=from_a_thread, args=(started,), daemon=True)
            t.start()
            while not started:
                done.wait(0.01)
            print(started[0], flush=True)
        elif cmd == "end":
            p = kids.pop(int(arg))
            p.kill()
            p.wait()
            print("ended", flush=True)
    done.set()
    for p in list(kids.values()):
        p.kill()
        p.wait()
""")


class Tree:
    """A root process whose `sleep` children the test starts and ends."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ROOT_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._ask(None) == "ready"

    def _ask(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def spawn(self) -> int:
        """A new `sleep` child, once it sleeps (its RSS settled after the exec)."""
        pid = int(self._ask("spawn"))
        wait_for(lambda: settled(pid), what=f"sleep {pid} to settle")
        return pid

    def spawn_from_a_thread(self) -> int:
        """A new `sleep` child forked by a second thread of the root (which stays alive)."""
        pid = int(self._ask("thread"))
        wait_for(lambda: settled(pid), what=f"sleep {pid} to settle")
        return pid

    def end(self, pid: int) -> None:
        assert self._ask(f"end {pid}") == "ended"

    def close(self) -> None:
        """End the root: at the end of its stdin it kills and reaps its children first."""
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    try:
        yield t
    finally:
        t.close()


def settled(pid: int) -> bool:
    """Asleep, with the same RSS over three reads: done with its start-up."""
    with open(f"/proc/{pid}/stat") as f:
        if f.read().rpartition(")")[2].split()[0] != "S":
            return False
    first = statm_rss(pid)
    for _ in range(2):
        time.sleep(0.02)
        if statm_rss(pid) != first:
            return False
    return True


def statm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tree_rss_is_the_sum_of_its_members(tree: Tree) -> None:
    kids = [tree.spawn(), tree.spawn()]
    sampler = TreeSampler()
    got = sampler.sample(tree.pid)
    assert got is not None
    total, members = got
    assert members[0] == tree.pid and sorted(members[1:]) == sorted(kids)
    assert total == sum(statm_rss(p) for p in members)
    assert total == sum(vm_rss(p) for p in members)  # what status, psutil and the runners read
    # The same members as the one pass over /proc finds.
    _rss, children = proc_table()
    assert sorted(tree_members(tree.pid, children)) == sorted(members)
    assert sampler.descriptors() == 2 * 3  # statm and children of each of the three
    sampler.close()


def test_a_child_that_appears_and_one_that_exits(tree: Tree) -> None:
    sampler = TreeSampler()
    first = tree.spawn()
    got = sampler.sample(tree.pid)
    assert got is not None and got[1] == [tree.pid, first]
    second = tree.spawn()
    got = sampler.sample(tree.pid)
    assert got is not None and sorted(got[1][1:]) == sorted([first, second])
    tree.end(first)  # killed and reaped by the root
    got = sampler.sample(tree.pid)
    assert got is not None and got[1] == [tree.pid, second]
    assert got[0] == statm_rss(tree.pid) + statm_rss(second)
    assert sampler.descriptors() == 4  # the ended child's two are closed
    sampler.close()


def test_a_child_forked_by_another_thread_is_counted(tree: Tree) -> None:
    kid = tree.spawn_from_a_thread()
    sampler = TreeSampler()
    got = sampler.sample(tree.pid)  # the first sample lists the root's threads
    assert got is not None and got[1] == [tree.pid, kid]
    assert got[0] == vm_rss(tree.pid) + vm_rss(kid)
    sampler.close()


def test_the_roots_death_zombie_then_reaped(tree: Tree) -> None:
    sampler = TreeSampler()
    before = open_fds()
    assert sampler.sample(tree.pid) is not None
    assert open_fds() == before + 2
    tree.proc.send_signal(signal.SIGKILL)
    # Until it is reaped, it is a zombie: its statm reads zeros.
    wait_for(lambda: (sampler.sample(tree.pid) or (None, None))[0] == 0, what="the root to be a zombie")
    tree.proc.wait()
    assert sampler.sample(tree.pid) is None
    assert len(sampler) == 0 and open_fds() == before  # dropped and closed at the first failed read


def test_a_held_descriptor_never_follows_its_pid_number(tree: Tree) -> None:
    """A held /proc descriptor refers to its process: after the reaping it fails (ESRCH) and is
    never read again, whatever process gets the pid next; a child is opened only while its
    parent is still the one that listed it."""
    kid = tree.spawn()
    node = _open(kid, tree.pid)
    assert node is not None and node.rss() == statm_rss(kid)
    assert _open(kid, os.getpid()) is None  # listed by another parent: refused
    tree.end(kid)
    assert node.rss() is None
    with pytest.raises(ProcessLookupError):
        os.pread(node.statm, 128, 0)
    node.close()


def test_keep_false_holds_nothing(tree: Tree) -> None:
    tree.spawn()
    sampler = TreeSampler()
    before = open_fds()
    got = sampler.sample(tree.pid, keep=False)
    assert got is not None and len(got[1]) == 2
    assert len(sampler) == 0 and open_fds() == before


def test_forget_closes_the_whole_tree(tree: Tree) -> None:
    tree.spawn()
    tree.spawn()
    sampler = TreeSampler()
    before = open_fds()
    assert sampler.sample(tree.pid) is not None
    assert open_fds() == before + 6
    sampler.forget(tree.pid)
    assert len(sampler) == 0 and open_fds() == before


def test_preflight_counts_the_samplers_descriptors_only_for_limited_programs(tmp_path: Path) -> None:
    from gsuper import config, preflight

    def needed(limit: str) -> int:
        path = tmp_path / "gsuper.ini"
        path.write_text(
            "[gsuper]\nrundir = run\nlogdir = log\n"
            f"[program:a]\ncommand = sleep 1\nnumprocs = 3\n{limit}\n"
            "[program:b]\ncommand = sleep 1\nnumprocs = 5\n"
        )
        return preflight.descriptors_needed(config.load(str(path)))

    assert needed("memory_limit = 64M") - needed("") == 3 * preflight.FDS_PER_SAMPLED_WORKER == 6


def test_out_of_descriptors_is_said_not_raised(tree: Tree, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    import errno

    import gsuper.memsample as memsample

    def emfile(*_args: Any, **_kwargs: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(memsample, "_warned_at", float("-inf"))
    monkeypatch.setattr(memsample.os, "open", emfile)
    sampler = TreeSampler()
    with caplog.at_level("WARNING", logger="gsuper"):
        assert sampler.sample(tree.pid) is None
        assert sampler.sample(tree.pid) is None
    said = [r.getMessage() for r in caplog.records if "too many open files" in r.getMessage()]
    assert said == [f"too many open files in the master: the memory of pid {tree.pid} (and maybe others) is not sampled"]
