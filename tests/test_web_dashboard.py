"""The dashboard in a real headless Chromium: it loads, shows every worker, logs no error, and
asks for nothing outside the master. The screenshot stays in the test's temp folder
(GSUPER_DASHBOARD_PNG=path also copies it there, GSUPER_DASHBOARD_WAIT=s lets charts fill)."""

import os
import shutil
import time

import pytest

from conftest import free_port, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (scripts/setup.sh installs it)"),
]

JOB = """
import random, time
time.sleep(random.uniform(0.004, 0.03))
"""


def test_dashboard_in_headless_chromium(gs, tmp_path):
    from cdp import Browser

    port = free_port()
    gs.file("job.py", JOB)
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:orders]
    runner = python
    script = job.py
    numprocs = 3
    max_request = 400
    usleep = 20000
    [program:mailer]
    runner = python
    script = job.py
    numprocs = 2
    usleep = 60000
    [program:broken]
    command = false
    startsecs = 1
    startretries = 1
    """)
    gs.start()
    wait_for(lambda: any(w["state"] == "FATAL" for w in gs.workers("broken")), 20, "broken to be FATAL")
    browser = Browser(tmp_path, dark=os.environ.get("GSUPER_DASHBOARD_DARK") == "1")
    try:
        base = f"http://127.0.0.1:{port}"
        browser.navigate(base + "/")
        rows = wait_for(
            lambda: (browser.evaluate("document.querySelectorAll('tr.worker').length") or 0) >= 6, 20, "the worker rows"
        )
        assert rows
        states = browser.evaluate("[...document.querySelectorAll('tr.worker')].map(r => r.dataset.state)")
        assert "FATAL" in states and states.count("RUNNING") >= 5, states
        cards = browser.evaluate("[...document.querySelectorAll('article.program')].map(a => a.dataset.program)")
        assert sorted(cards) == ["broken", "mailer", "orders"]
        # A second poll gives the charts their first rate.
        wait_for(lambda: browser.evaluate("document.querySelectorAll('path.rps-line').length") >= 1, 20, "a chart line")
        assert browser.evaluate("document.getElementById('live').className") == "live ok"
        assert browser.evaluate("document.querySelectorAll('#events li:not(.empty)').length") > 0
        extra = float(os.environ.get("GSUPER_DASHBOARD_WAIT", "0"))
        if extra:
            time.sleep(extra)  # only when making the docs' screenshot: let the charts fill
        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10000
        if os.environ.get("GSUPER_DASHBOARD_PNG"):
            shutil.copy(shot, os.environ["GSUPER_DASHBOARD_PNG"])
        assert browser.console_errors() == []
        outside = [u for u in browser.requested_urls() if not u.startswith(base + "/") and u != "about:blank"]
        assert outside == []
    finally:
        browser.close()
        gs.run("-s", "stop", check=True)
