"""`pip install .` gives a gsuper whose runners are found and whose command line works."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(180)


def test_installed_package_finds_its_runner_files(tmp_path):
    pytest.importorskip("wheel", reason="the test extras bring wheel, to build without a network")
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    code = (
        "import os, sys\n"
        "from gsuper import runners, config, __version__\n"
        "assert runners.__file__.startswith(sys.argv[1]), runners.__file__\n"
        "for name in ('php/worker.php', 'python/worker.py', 'shell/worker.sh'):\n"
        "    assert os.path.isfile(os.path.join(runners.runners_dir(), name)), name\n"
        "assert runners.runners_dir().startswith(sys.argv[1])\n"
        "print(__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0.2.0"
    script = subprocess.run([sys.executable, "-m", "gsuper", "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert script.stdout.strip() == "gsuper 0.2.0"
