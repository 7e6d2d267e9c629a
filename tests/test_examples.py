"""The example gsuper.ini, as shipped, supervising the demo consumers on real queues."""

import shutil

import pytest

from conftest import PHP, ROOT, free_port, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(PHP is None or not shutil.which("redis-server"), reason="needs php and redis"),
]


def test_the_example_config_runs_every_demo(gs):
    shutil.copytree(ROOT / "examples", gs.root / "examples", ignore=shutil.ignore_patterns("done*", "*.job", "run", "log"))
    text = (ROOT / "gsuper.ini").read_text().replace("6390", str(free_port()))
    gs.config.write_text(text)
    assert gs.run("-s", "check", check=True).stdout.strip().endswith("(8 programs, 11 workers, 2 groups)")
    out = gs.start().stdout
    assert "php_redis: 2 workers started" in out and "redis: 1 worker started" in out

    def busy() -> bool:
        rows = gs.workers()
        served = {w["program"] for w in rows if w["requests"] > 0}
        return {"php_redis", "php_spool", "py_consumer", "produce_redis", "produce_spool", "produce_py"} <= served

    wait_for(busy, 60, "every consumer and producer serving requests", 0.2)
    wait_for(lambda: "heartbeat 1" in gs.log("heartbeat"), 30, what="a heartbeat")
    assert (gs.root / "examples/php_spool/spool/done.log").read_text().strip()
    assert (gs.root / "examples/python_consumer/done.txt").read_text().strip()
    assert "FATAL" not in gs.log()
    gs.run("-s", "stop", "-g", "producers", check=True)
    assert {w["state"] for w in gs.workers() if w["program"].startswith("produce")} == {"STOPPED"}
    gs.run("-s", "stop", check=True)
    assert not gs.running()
