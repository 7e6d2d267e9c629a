"""The master imports the optional parts only where its configuration uses them (issue 16):
a plain configuration's master never loads the autoscaler, the backlog readers, the hooks, the
HTTP endpoint, psutil or hashlib (OpenSSL). A subprocess makes the Master of a configuration
and loads its features, as `run` does, then lists its modules; and a reload that brings the
first scale_source starts autoscaling (through the real command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, wait_for

PROBE = """
import json, sys
from gsuper import config
from gsuper.master import Master
cfg = config.load(sys.argv[1])
master = Master(cfg)
master._features(cfg)
print(json.dumps(sorted(sys.modules)))
"""

OPTIONAL = {"gsuper.autoscale", "gsuper.backlog", "gsuper.scaling", "gsuper.hooks", "gsuper.web.server"}


def modules_of(tmp_path: Path, text: str) -> set[str]:
    path = tmp_path / "gsuper.ini"
    path.write_text("[gsuper]\nrundir = run\nlogdir = log\n" + text)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout))


def test_a_plain_configuration_loads_no_optional_part(tmp_path: Path) -> None:
    loaded = modules_of(tmp_path, "[program:a]\ncommand = sleep 100\nnumprocs = 2\nmemory_limit = 64M\n")
    assert "gsuper.master" in loaded and "gevent" in loaded
    assert not loaded & OPTIONAL
    assert "psutil" not in loaded and "hashlib" not in loaded


def test_scale_source_and_hooks_load_theirs(tmp_path: Path) -> None:
    loaded = modules_of(
        tmp_path,
        "[program:a]\ncommand = sleep 100\nnumprocs = 1\nnumprocs_max = 3\nscale_source = command:echo 1\n"
        "[hook:h]\nevents = fatal\ncommand = true\n",
    )
    assert {"gsuper.autoscale", "gsuper.backlog", "gsuper.scaling", "gsuper.hooks"} <= loaded
    assert "gsuper.web.server" not in loaded


def test_a_reload_that_adds_a_scale_source_starts_autoscaling(gs):
    """The autoscaler check is made by the reload that brings the first scale_source."""
    (gs.root / "depth").write_text("25\n")
    gs.write("""
    [program:w]
    command = sleep 1000
    numprocs = 1
    startsecs = 0
    """)
    gs.start()
    wait_for(lambda: len(gs.workers("w")) == 1, 10, "1 worker")
    gs.write("""
    [program:w]
    command = sleep 1000
    numprocs = 1
    numprocs_max = 4
    scale_source = command:cat depth
    scale_interval = 0.1
    scale_cooldown = 0.3
    scale_step = 4
    startsecs = 0
    """)
    gs.run("-s", "reload", check=True)
    wait_for(lambda: len([w for w in gs.workers("w") if w["state"] == "RUNNING"]) == 3, 15, "3 workers (ceil(25/10))")
    gs.run("-s", "stop", check=True)
