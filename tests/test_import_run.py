"""gsuper -s import through the real command line: each documented deployment imports, passes
check unchanged, starts, and runs the expected number of workers doing their work (real Laravel
8 and Symfony Messenger on a real Redis where Debian packages them; a stand-in for Horizon)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import BIN, PHP, Gsuper, wait_for

APPS = Path(__file__).resolve().parent / "import_apps"
NODE = shutil.which("node")
needs_php = pytest.mark.skipif(PHP is None, reason="php is not installed")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")
needs_laravel = pytest.mark.skipif(not os.path.exists("/usr/share/php/Illuminate/autoload.php"), reason="php-laravel-framework")
needs_messenger = pytest.mark.skipif(
    not os.path.exists("/usr/share/php/Symfony/Component/Messenger/Bridge/Redis/autoload.php"),
    reason="php-symfony-redis-messenger",
)


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, BIN, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def run_as() -> str | None:
    """The `user =` to give a documented config: the current user when root (forge does not exist here)."""
    return pwd.getpwuid(os.getuid()).pw_name if os.getuid() == 0 else None


def import_and_check(gs: Gsuper, source: Path) -> tuple[str, str]:
    """Import `source` into gs.config exactly as printed, and require `check` to pass on it."""
    proc = cli("-s", "import", str(source), cwd=gs.root)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    gs.config.write_text(proc.stdout)
    checked = gs.run("-s", "check")
    assert checked.returncode == 0, f"{checked.stderr}\n{proc.stdout}"
    return proc.stdout, proc.stderr


def done(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else {}


def app(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(APPS / name, target)
    (target / "done").mkdir()
    return target


# -- supervisor: Laravel, Horizon, Symfony -------------------------------------------------------


@needs_php
@needs_laravel
def test_laravel_documented_queue_worker(gs: Gsuper, redis_server: object) -> None:
    lv = app(gs.root, "laravel")
    user = f"user={run_as()}" if run_as() else ""
    # Laravel's documented worker, with its paths in the test's app and the redis connection.
    (gs.root / "laravel-worker.conf").write_text(
        textwrap.dedent(
            f"""\
            [program:laravel-worker]
            process_name=%(program_name)s_%(process_num)02d
            command=php {lv}/artisan queue:work redis --sleep=3 --tries=3 --max-time=3600
            autostart=true
            autorestart=true
            stopasgroup=true
            killasgroup=true
            {user}
            numprocs=8
            redirect_stderr=true
            stdout_logfile={lv}/worker.log
            stopwaitsecs=3600
            environment=REDIS_PORT={redis_server.port},DONE_DIR="{lv}/done"
            """  # type: ignore[attr-defined]
        )
    )
    text, notes = import_and_check(gs, gs.root / "laravel-worker.conf")
    assert "stop_timeout = 3600" in text and "autorestart = true" in text and f"logfile = {lv}/worker.log" in text
    assert "# not imported: process_name = %(program_name)s_%(process_num)02d" in text
    assert "process_name" in notes
    for n in range(40):
        payload = {
            "uuid": uuid.uuid4().hex,
            "displayName": "App\\Jobs\\Touch",
            "job": "App\\Jobs\\Touch",
            "maxTries": None,
            "maxExceptions": None,
            "backoff": None,
            "timeout": None,
            "data": {"n": n},
            "id": str(n),
            "attempts": 0,
        }
        redis_server.rpush("queues:default", json.dumps(payload))  # type: ignore[attr-defined]
    gs.start()
    assert len(gs.wait_workers("laravel-worker")) == 8
    finished = wait_for(lambda: (d := done(lv / "done")) and len(d) == 40 and d, 30, "40 Laravel jobs done")
    assert len(set(finished.values())) >= 2, "several workers share the queue"
    assert wait_for(lambda: "Processed:  App\\Jobs\\Touch" in (lv / "worker.log").read_text(errors="replace"), 10, "worker.log")
    assert gs.run("-s", "stop", check=True).returncode == 0


@needs_php
def test_horizon_documented_config(gs: Gsuper, redis_server: object) -> None:
    hz = app(gs.root, "horizon")
    user = f"user={run_as()}" if run_as() else ""
    (gs.root / "horizon.conf").write_text(
        textwrap.dedent(
            f"""\
            [program:horizon]
            process_name=%(program_name)s
            command=php {hz}/artisan horizon
            autostart=true
            autorestart=true
            {user}
            redirect_stderr=true
            stdout_logfile={hz}/horizon.log
            stopwaitsecs=3600
            environment=REDIS_PORT={redis_server.port},DONE_DIR={hz}/done
            """  # type: ignore[attr-defined]
        )
    )
    text, notes = import_and_check(gs, gs.root / "horizon.conf")
    assert "# not imported:" not in text and notes == ""  # the documented Horizon config carries over whole
    gs.start()
    (worker,) = gs.wait_workers("horizon")
    for n in range(5):
        redis_server.rpush("horizon:jobs", str(n))  # type: ignore[attr-defined]
    wait_for(lambda: len(done(hz / "done")) == 5, 15, "5 Horizon jobs done")
    assert gs.run("-s", "stop", check=True).returncode == 0
    assert "Horizon terminated." in (hz / "horizon.log").read_text()  # drained on TERM, not killed


@needs_php
@needs_messenger
def test_symfony_messenger_documented_config(gs: Gsuper, redis_server: object) -> None:
    sf = app(gs.root, "symfony")
    user = f"user={run_as()}" if run_as() else ""
    env = f"REDIS_PORT={redis_server.port},DONE_DIR={sf}/done"  # type: ignore[attr-defined]
    (gs.root / "messenger-worker.conf").write_text(
        textwrap.dedent(
            f"""\
            ;/etc/supervisor/conf.d/messenger-worker.conf
            [program:messenger-consume]
            command=php {sf}/bin/console messenger:consume async --time-limit=3600
            {user}
            numprocs=2
            startsecs=0
            autostart=true
            autorestart=true
            startretries=10
            process_name=%(program_name)s_%(process_num)02d
            environment=MESSENGER_CONSUMER_NAME=%(program_name)s_%(process_num)02d,{env}
            """
        )
    )
    text, _ = import_and_check(gs, gs.root / "messenger-worker.conf")
    assert "startsecs = 0" in text and "startretries = 10" in text
    assert "MESSENGER_CONSUMER_NAME=%(program_name)s_%(process_num)02d" in text
    sent = subprocess.run(
        [PHP or "php", str(sf / "bin" / "send.php"), "30"],
        env={**os.environ, "REDIS_PORT": str(redis_server.port)},  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    gs.start()
    assert len(gs.wait_workers("messenger-consume")) == 2
    finished = wait_for(lambda: (d := done(sf / "done")) and len(d) == 30 and d, 30, "30 Messenger messages handled")
    consumers = {v.split()[0] for v in finished.values()}
    assert consumers <= {"messenger-consume_00", "messenger-consume_01"} and consumers, consumers
    assert gs.run("-s", "stop", check=True).returncode == 0


def test_supervisor_include_imports_every_program(gs: Gsuper) -> None:
    (gs.root / "conf.d").mkdir()
    (gs.root / "supervisord.conf").write_text("[supervisord]\nnodaemon=true\n\n[include]\nfiles = conf.d/*.conf\n")
    (gs.root / "conf.d" / "a.conf").write_text("[program:a]\ncommand=sleep 30\nnumprocs=2\n")
    (gs.root / "conf.d" / "b.conf").write_text("[program:b]\ncommand=/bin/sh -c 'echo b-%(process_num)d; exec sleep 30'\n")
    text, notes = import_and_check(gs, gs.root / "supervisord.conf")
    assert "[supervisord] nodaemon" in notes
    gs.start()
    assert len(gs.wait_workers("a")) == 2 and len(gs.wait_workers("b")) == 1
    wait_for(lambda: "b-0" in gs.log("b"), 10, "b's log line")
    gs.run("-s", "stop", check=True)


# -- PM2 ----------------------------------------------------------------------------------------

NODE_APP = """\
// Writes its instance number and pid, then waits for SIGTERM like a server would.
const fs = require('fs');
fs.writeFileSync(process.env.OUT + '/w' + process.env.NODE_APP_INSTANCE, String(process.pid) + ' ' + process.env.NODE_ENV);
const t = setInterval(() => {}, 1000);
process.on('SIGTERM', () => { clearInterval(t); process.exit(0); });
"""


@needs_node
@pytest.mark.parametrize("kind", ["json", "config.js"])
def test_pm2_ecosystem_file(gs: Gsuper, kind: str) -> None:
    (gs.root / "out").mkdir()
    gs.file("app/server.js", NODE_APP)
    app_def = {
        "name": "api",
        "script": "server.js",
        "cwd": str(gs.root / "app"),
        "instances": 3,
        "exec_mode": "cluster",
        "max_memory_restart": "200M",
        "env": {"NODE_ENV": "development", "OUT": str(gs.root / "out")},
        "env_production": {"NODE_ENV": "production"},
    }
    if kind == "json":
        source = gs.file("ecosystem.json", json.dumps({"apps": [app_def]}))
    else:  # evaluated by node: computed values, as real ecosystem files have
        source = gs.file(
            "ecosystem.config.js",
            f"""\
            const path = require('path');
            const app = {json.dumps(app_def)};
            app.instances = 1 + 2;
            app.cwd = path.join(__dirname, 'app');
            module.exports = {{ apps: [app] }};
            """,
        )
    text, notes = import_and_check(gs, source)
    assert "memory_limit = 200M" in text and "# not imported: exec_mode = cluster" in text
    assert "exec_mode" in notes and "env_production" in notes
    gs.start()
    assert len(gs.wait_workers("api")) == 3
    files = wait_for(lambda: len(d := done(gs.root / "out")) == 3 and d, 10, "3 instances writing their number")
    assert set(files) == {"w0", "w1", "w2"}  # NODE_APP_INSTANCE per worker, as PM2 gives it
    assert all(v.endswith(" development") for v in files.values())
    gs.run("-s", "stop", check=True)


# -- the original manager -----------------------------------------------------------------------


@needs_php
def test_original_service_conf_over_global_config(gs: Gsuper) -> None:
    task = gs.root / "task"
    gs.file(
        "task/framework.php",
        """\
        <?php
        // The "framework" the original loads first: the task below uses what it defines.
        function fw_out(string $name): string { return __DIR__ . '/done/' . $name; }
        """,
    )
    gs.file(
        "task/member_1.php",
        """\
        <?php
        class member_1
        {
            private int $runs = 0;
            public function run(): void
            {
                $this->runs++;
                file_put_contents(fw_out('member_1.' . getmypid()), (string) $this->runs);
            }
        }
        """,
    )
    (task / "done").mkdir()
    gs.file(
        "globalConfig.php",
        """\
        <?php
        define('GLOBAL_PATH', __DIR__);
        return [
            'logPath' => GLOBAL_PATH . '/log',
            'sleepTime' => 20000,
            'workerDir' => GLOBAL_PATH . '/task',
            'workerLoadFileBefore' => ['framework.php'],
        ];
        """,
    )
    source = gs.file(
        "serviceConf.php",
        """\
        <?php
        return [
            'moduleName' => 'member_module',
            'processName' => ':member',
            'exec' => [
                ['name' => 'member_1', 'max_request' => 5, 'memory_limit' => 64, 'workNum' => 2],
            ],
        ];
        """,
    )
    text, notes = import_and_check(gs, source)
    assert "handler = member_1::run" in text and "usleep = 20000" in text and "max_request = 5" in text
    assert f"bootstrap = {task}/framework.php, {task}/member_1.php" in text
    assert "processName" in notes and "globalConfig.php" in notes
    gs.start()
    assert len(gs.wait_workers("member_1")) == 2
    # max_request = 5: each life runs 5 times and is replaced, so more than 2 pids soon did work.
    wait_for(lambda: sum(1 for v in done(task / "done").values() if v == "5") >= 3, 20, "three worker lives of 5 runs")
    assert "member_1" in gs.run("-s", "status", "-g", "member_module", check=True).stdout
    gs.run("-s", "stop", check=True)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", "garbage\x00 not a config\n", "not a supervisord.conf, a PM2 ecosystem file"),
        ("supervisord.conf", "[supervisord]\nnodaemon=true\n", "no programs to import in this supervisord.conf"),
        ("ecosystem.json", '{"apps": []}', "no programs to import in this PM2 ecosystem file"),
        ("ecosystem.json", '{"apps": [', "line 1: not valid JSON"),
        ("broken.conf", "[program:x]\ncommand=a\nno equals sign here\n", "line 3: not a supervisor 'key = value' line"),
        ("ecosystem.config.js", "module.exports = { apps: [ ", "node could not evaluate it"),
        ("serviceConf.php", "<?php return ['workerDir' => '/tmp'];", "no 'exec' list"),
        ("serviceConf.php", "<?php this is not php", "php could not evaluate it"),
        ("gsuper.ini", "[gsuper]\n", "already a gsuper configuration"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path: Path, name: str, content: str, message: str) -> None:
    if name.endswith(".js") and NODE is None or name.endswith(".php") and PHP is None:
        pytest.skip("node or php is not installed")
    (tmp_path / name).write_text(content)
    proc = cli("-s", "import", str(tmp_path / name))
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_missing_node_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "ecosystem.config.js").write_text("module.exports = {apps: []};")
    proc = cli("-s", "import", str(tmp_path / "ecosystem.config.js"), env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"gsuper: {tmp_path}/ecosystem.config.js: node is needed to read this file and is not found on PATH"
    )
    assert cli("-s", "import").returncode == 2  # FILE is required
