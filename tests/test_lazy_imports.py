"""The master imports the optional parts only where its configuration uses them (issue 16):
a plain configuration's master never loads the autoscaler, the backlog readers, the hooks, the
HTTP endpoint, psutil or hashlib (OpenSSL). A subprocess makes the Master of a configuration
and loads its features, as `run` does, then lists its modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

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
