"""gsuper -s import, the pure part: each converter from a parsed file to sections, and rendering."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from configobj import ConfigObj
from hypothesis import given, settings
from hypothesis import strategies as st

from gsuper import importers
from gsuper.importers import ImportFailure, legacy, pm2, supervisor
from gsuper.importers.supervisor import RawSection


def sup(*sections: tuple[str, dict[str, str]], here: str = "/etc/supervisor") -> importers.Imported:
    raw = [RawSection(name, tuple(items.items()), here, f"{here}/supervisord.conf") for name, items in sections]
    return supervisor.convert(raw, f"{here}/supervisord.conf", hostname="web1")


def keys(sec: importers.Section) -> dict[str, str]:
    return dict(sec.keys)


def skipped(sec: importers.Section) -> dict[str, str]:
    return {s.key: s.value for s in sec.skipped}


# -- supervisor ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "want", "gone"),
    [
        (
            {"command": "php artisan queue:work"},
            {"runner": "exec", "command": "php artisan queue:work", "autorestart": "unexpected"},
            {},
        ),
        ({"command": "x", "autorestart": "true"}, {"autorestart": "true"}, {}),
        ({"command": "x", "autorestart": "unexpected"}, {"autorestart": "unexpected"}, {}),
        ({"command": "x", "autostart": "false"}, {"autostart": "false"}, {}),
        ({"command": "x", "autostart": "yes"}, {"autostart": "true"}, {}),
        ({"command": "x", "stopwaitsecs": "3600"}, {"stop_timeout": "3600"}, {}),
        (
            {"command": "x", "numprocs": "8", "priority": "5", "user": "forge"},
            {"numprocs": "8", "priority": "5", "user": "forge"},
            {},
        ),
        ({"command": "x", "startsecs": "0", "startretries": "10"}, {"startsecs": "0", "startretries": "10"}, {}),
        ({"command": "x", "exitcodes": "0,2"}, {"exitcodes": "0, 2"}, {}),
        ({"command": "x", "stopsignal": "QUIT"}, {"stopsignal": "QUIT"}, {}),
        ({"command": "x", "directory": "/srv/app"}, {"directory": "/srv/app"}, {}),
        ({"command": "x", "stdout_logfile": "/var/log/w.log"}, {"logfile": "/var/log/w.log"}, {}),
        ({"command": "x", "stdout_logfile": "NONE"}, {"logfile": "/dev/null"}, {}),
        ({"command": "x", "stdout_logfile": "AUTO"}, {}, {}),
        ({"command": "x", "stderr_logfile": "/var/log/e.log"}, {"stderr_logfile": "/var/log/e.log"}, {}),
        (
            {"command": "x", "redirect_stderr": "true", "stderr_logfile": "/var/log/e.log"},
            {},
            {"stderr_logfile": "/var/log/e.log"},
        ),
        (
            {"command": "x", "stdout_logfile_maxbytes": "10MB", "stdout_logfile_backups": "3"},
            {"log_max_bytes": "10M", "log_backups": "3"},
            {},
        ),
        ({"command": "x", "stdout_logfile_maxbytes": "0"}, {"log_max_bytes": "0"}, {}),
        ({"command": "x", "stdout_logfile_maxbytes": "1024"}, {"log_max_bytes": "1024B"}, {}),
        ({"command": "x", "stopasgroup": "true", "killasgroup": "true"}, {}, {}),
        ({"command": "x", "stopasgroup": "false"}, {}, {"stopasgroup": "false"}),
        ({"command": "x", "umask": "022", "serverurl": "AUTO"}, {}, {"umask": "022", "serverurl": "AUTO"}),
        (
            {"command": "x", "stdout_events_enabled": "true", "stdout_syslog": "true"},
            {},
            {"stdout_events_enabled": "true", "stdout_syslog": "true"},
        ),
        ({"command": "x", "stdout_logfile": "/dev/stdout"}, {}, {"stdout_logfile": "/dev/stdout"}),
        ({"command": "x", "numprocs_start": "1"}, {}, {"numprocs_start": "1"}),
        ({"command": "x", "numprocs_start": "0"}, {}, {}),
        ({"command": "x", "frobnicate": "1"}, {}, {"frobnicate": "1"}),
    ],
)
def test_supervisor_program_keys(items: dict[str, str], want: dict[str, str], gone: dict[str, str]) -> None:
    imp = sup(("program:w", items))
    got = keys(imp.programs[0])
    for key, value in want.items():
        assert got.get(key) == value, (key, got)
    assert skipped(imp.programs[0]) == gone
    if "stdout_logfile" in items and items["stdout_logfile"] in ("AUTO", "/dev/stdout"):
        assert "logfile" not in got


def test_supervisor_process_name_is_a_note_naming_gsuper_workers() -> None:
    imp = sup(("program:laravel-worker", {"command": "x", "process_name": "%(program_name)s_%(process_num)02d", "numprocs": "8"}))
    (note,) = imp.programs[0].skipped
    assert note.key == "process_name" and note.value == "%(program_name)s_%(process_num)02d"
    assert "laravel-worker#INDEX" in note.why
    # The plain default says nothing that is lost.
    assert sup(("program:w", {"command": "x", "process_name": "%(program_name)s"})).programs[0].skipped == []


def test_supervisor_expansions_map_to_gsuper_or_resolve_at_import() -> None:
    imp = sup(
        ("group:queues", {"programs": "w"}),
        (
            "program:w",
            {
                "command": "run --name %(program_name)s_%(process_num)02d --group %(group_name)s --of %(numprocs)d --in %(here)s",
                "environment": 'NAME="%(program_name)s_%(process_num)02d",HOST=%(host_node_name)s,HOME="%(ENV_HOME)s"',
                "directory": "%(here)s/app",
                "user": "%(program_name)s",
                "numprocs": "2",
            },
        ),
    )
    got = keys(imp.programs[0])
    assert got["command"] == "run --name %(program_name)s_%(process_num)02d --group queues --of 2 --in /etc/supervisor"
    assert got["environment"] == "NAME=%(program_name)s_%(process_num)02d, HOST=web1, HOME=%(ENV_HOME)s"
    assert got["directory"] == "/etc/supervisor/app"
    assert got["user"] == "w"  # gsuper expands only command, environment, directory and the logs
    assert any("host web1" in c for c in imp.programs[0].comments)
    assert keys(imp.groups[0]) == {"programs": "w"}


def test_supervisor_environment_quotes_and_supervisord_environment() -> None:
    imp = sup(
        ("supervisord", {"environment": "A=1,B=2", "logfile": "/var/log/supervisord.log", "childlogdir": "/var/log/sv"}),
        ("program:w", {"command": "x", "environment": 'B="two, with comma",C=3'}),
    )
    assert keys(imp.programs[0])["environment"] == "A=1, B='two, with comma', C=3"
    assert keys(imp.gsuper) == {"logdir": "/var/log/sv"}
    assert [s.key for s in imp.skipped] == ["[supervisord] logfile"]


def test_supervisor_other_sections_are_noted_whole() -> None:
    imp = sup(
        ("unix_http_server", {"file": "/run/supervisor.sock"}),
        ("rpcinterface:supervisor", {"supervisor.rpcinterface_factory": "x"}),
        ("eventlistener:memmon", {"command": "memmon -a 200MB"}),
        ("program:w", {"command": "x"}),
        ("group:g", {"programs": "w", "priority": "10"}),
    )
    assert [s.key for s in imp.skipped] == ["[unix_http_server]", "[rpcinterface:supervisor]", "[eventlistener:memmon]"]
    assert "[hook:NAME]" in imp.skipped[2].why
    assert skipped(imp.groups[0]) == {"priority": "10"}


def test_supervisor_read_follows_includes_relative_to_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "supervisord.conf").write_text(
        "; supervisor's own comment\n[supervisord]\nnodaemon = true\n\n[include]\nfiles = conf.d/*.conf missing/*.conf\n"
    )
    (tmp_path / "conf.d" / "b.conf").write_text("[program:b]\ncommand = sleep 1 ; a comment\ndirectory = %(here)s\n")
    (tmp_path / "conf.d" / "a.conf").write_text("[program:a]\ncommand = sleep 2\n")
    sections = supervisor.read(str(tmp_path / "supervisord.conf"))
    imp = supervisor.convert(sections, str(tmp_path / "supervisord.conf"))
    assert [p.name for p in imp.programs] == ["a", "b"]
    b = keys(imp.programs[1])
    assert b["command"] == "sleep 1" and b["directory"] == str(tmp_path / "conf.d")
    assert len(imp.warnings) == 1 and "missing/*.conf" in imp.warnings[0]


def test_supervisor_read_errors_are_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[program:x]\ncommand = a\nthis line has no equals sign\n")
    with pytest.raises(ImportFailure, match=r"bad.conf: line 3: "):
        supervisor.read(str(bad))


# -- PM2 ---------------------------------------------------------------------------------------


def pm(app: dict[str, object], cpus: int = 4) -> importers.Section:
    return pm2.convert({"apps": [app]}, "/srv/ecosystem.config.js", cpus).programs[0]


@pytest.mark.parametrize(
    ("app", "want"),
    [
        (
            {"script": "app.js"},
            {"command": "node app.js", "numprocs": "1", "stop_timeout": "1600ms", "startretries": "16", "autorestart": "true"},
        ),
        (
            {"name": "api", "script": "server.js", "args": "--port 80", "node_args": "--max-old-space-size=512"},
            {"command": "node --max-old-space-size=512 server.js --port 80"},
        ),
        ({"script": "worker.py", "args": ["-q", "jobs"]}, {"command": "python3 worker.py -q jobs"}),
        ({"script": "artisan", "interpreter": "php", "args": "queue:work"}, {"command": "php artisan queue:work"}),
        ({"script": "./bin/consume", "interpreter": "none"}, {"command": "./bin/consume"}),
        ({"script": "consume"}, {"command": "consume"}),
        ({"script": "npm run worker -- --queue high"}, {"command": "npm run worker -- --queue high"}),
        ({"script": "w.sh", "args": "--fmt %(x)s 100%"}, {"command": "bash w.sh --fmt '%%(x)s' 100%%"}),
        (
            {"script": "a.js", "env": {"FMT": "100%", "TPL": "%(name)s"}},
            {"environment": "FMT=100%, TPL=%%(name)s, NODE_APP_INSTANCE=%(process_num)d"},
        ),
        ({"script": "a.js", "instances": 4}, {"numprocs": "4"}),
        ({"script": "a.js", "instances": "max"}, {"numprocs": "4"}),
        ({"script": "a.js", "instances": -1}, {"numprocs": "3"}),
        ({"script": "a.js", "max_memory_restart": "150M"}, {"memory_limit": "150M"}),
        ({"script": "a.js", "max_memory_restart": 104857600}, {"memory_limit": "100M"}),
        (
            {"script": "a.js", "kill_timeout": 3000, "min_uptime": 500, "max_restarts": 5},
            {"stop_timeout": "3", "startsecs": "500ms", "startretries": "5"},
        ),
        ({"script": "a.js", "min_uptime": "10s"}, {"startsecs": "10s"}),
        ({"script": "a.js", "autorestart": False}, {"autorestart": "false"}),
        ({"script": "a.js", "stop_exit_codes": [0, 3]}, {"autorestart": "unexpected", "exitcodes": "0, 3"}),
        ({"script": "a.js", "cwd": "/srv/app", "uid": "www-data"}, {"directory": "/srv/app", "user": "www-data"}),
        (
            {"script": "a.js", "out_file": "/var/log/out.log", "error_file": "/var/log/err.log"},
            {"logfile": "/var/log/out.log", "stderr_logfile": "/var/log/err.log"},
        ),
        ({"script": "a.js", "log_file": "/var/log/all.log"}, {"logfile": "/var/log/all.log"}),
        (
            {"script": "a.js", "env": {"NODE_ENV": "dev", "PORT": 3000, "DEBUG": True}},
            {"environment": "NODE_ENV=dev, PORT=3000, DEBUG=true, NODE_APP_INSTANCE=%(process_num)d"},
        ),
        ({"script": "a.js", "instance_var": "INSTANCE_ID"}, {"environment": "INSTANCE_ID=%(process_num)d"}),
    ],
)
def test_pm2_app_keys(app: dict[str, object], want: dict[str, str]) -> None:
    got = keys(pm(app))
    for key, value in want.items():
        assert got.get(key) == value, (key, got)


def test_pm2_keys_without_equivalent_are_notes() -> None:
    sec = pm(
        {
            "script": "a.js",
            "exec_mode": "cluster",
            "watch": True,
            "cron_restart": "0 0 * * *",
            "env_production": {"NODE_ENV": "production"},
            "restart_delay": 100,
            "wait_ready": True,
            "gid": "www",
            "shiny": 1,
        }
    )
    got = skipped(sec)
    assert set(got) == {"exec_mode", "watch", "cron_restart", "env_production", "restart_delay", "wait_ready", "gid", "shiny"}
    assert got["env_production"] == "NODE_ENV=production"
    assert skipped(pm({"script": "a.js", "exec_mode": "fork", "watch": False, "treekill": True})) == {}


def test_pm2_namespace_becomes_a_group_and_bad_files_fail() -> None:
    imp = pm2.convert(
        {"apps": [{"script": "a.js", "namespace": "q"}, {"script": "b.js", "namespace": "q"}], "deploy": {}}, "/e.json", 1
    )
    assert [keys(g) for g in imp.groups] == [{"programs": "a, b"}]
    assert [s.key for s in imp.skipped] == ["deploy"]
    with pytest.raises(ImportFailure, match="no apps list"):
        pm2.convert({"name": "x"}, "/e.json", 1)
    with pytest.raises(ImportFailure, match=r"apps\[0\]: script is required"):
        pm2.convert({"apps": [{"name": "x"}]}, "/e.json", 1)


# -- the original manager ----------------------------------------------------------------------

ORIGINAL = {
    "moduleName": "member_module",
    "logPath": "/srv/pm/log",
    "processName": ":member",
    "sleepTime": 40000,
    "workerDir": "/srv/pm/task",
    "workerLoadFileBefore": ["framework.php"],
    "redis": {"host": "127.0.0.1"},
    "exec": [
        {"name": "member_1", "max_request": 1000, "memory_limit": 1024, "workNum": 10},
        {"name": "member_2", "files": "tasks/m2", "workNum": 2, "color": "red"},
    ],
}


def test_legacy_entries_become_php_programs() -> None:
    imp = legacy.convert(ORIGINAL, "/srv/pm/serviceConf.php")
    one, two = (keys(p) for p in imp.programs)
    assert one == {
        "runner": "php",
        "handler": "member_1::run",
        "bootstrap": "/srv/pm/task/framework.php, /srv/pm/task/member_1.php",
        "directory": "/srv/pm/task",
        "numprocs": "10",
        "max_request": "1000",
        "memory_limit": "1024M",
        "usleep": "40000",
    }
    assert two["bootstrap"] == "/srv/pm/task/framework.php, /srv/pm/task/tasks/m2.php" and two["numprocs"] == "2"
    assert "max_request" not in two and "memory_limit" not in two
    assert skipped(imp.programs[1]) == {"color": "red"}
    assert keys(imp.gsuper) == {"logdir": "/srv/pm/log"}
    assert {s.key for s in imp.skipped} == {"processName", "redis"}
    assert keys(imp.groups[0]) == {"programs": "member_1, member_2"}


@pytest.mark.parametrize(
    ("conf", "match"),
    [
        ({"workerDir": "/x"}, "no 'exec' list"),
        ({"exec": [{"workNum": 2}]}, r"exec\[0\]: an entry needs a 'name'"),
        ({"exec": [{"name": "a", "workNum": "many"}]}, r"exec\[0\] \(a\) workNum: 'many' is not a whole number"),
        ({"exec": [{"name": "a", "workNum": 0}]}, "must be at least 1"),
    ],
)
def test_legacy_bad_arrays_fail_in_one_sentence(conf: dict[str, object], match: str) -> None:
    with pytest.raises(ImportFailure, match=match):
        legacy.convert(conf, "/srv/serviceConf.php")


# -- detection and rendering -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("supervisord.conf", "[supervisord]\n", "supervisor"),
        ("laravel-worker.conf", "\n[program:laravel-worker]\n", "supervisor"),
        ("x.ini", "; c\n[group:g]\n", "supervisor"),
        ("ecosystem.config.js", "module.exports = {}", "pm2"),
        ("ecosystem.json", "{}", "pm2"),
        ("process.yml.json", "[{}]", "pm2"),
        ("serviceConf.php", "<?php return [];", "legacy"),
        ("conf", "<?php\nreturn [];", "legacy"),
    ],
)
def test_detect(name: str, head: str, kind: str) -> None:
    assert importers.detect(name, head) == kind


@pytest.mark.parametrize("head", ["garbage", "", "\x00\x01binary", "[section]\nkey = value\n"])
def test_detect_refuses_what_is_none_of_them(head: str) -> None:
    with pytest.raises(ImportFailure, match="not a supervisord.conf, a PM2 ecosystem file"):
        importers.detect("notes.txt", head)
    with pytest.raises(ImportFailure, match="already a gsuper configuration"):
        importers.detect("gsuper.ini", "[gsuper]\n")


@pytest.mark.parametrize(
    "value",
    ["plain", "sh -c 'echo a # b'", '"quoted start" arg', "a, b, c", "%(program_name)s_%(process_num)02d", "100% sure"],
)
def test_rendered_values_read_back_unchanged(value: str) -> None:
    from gsuper.config import unquote

    imp = importers.Imported("supervisor", "/x.conf")
    sec = imp.program("p")
    sec.set("command", value)
    sec.skip("umask", "022", "why")
    text = importers.render(imp)
    read = ConfigObj(text.splitlines(), list_values=False, interpolation=False)
    assert unquote(read["program:p"]["command"]) == value
    assert "# not imported: umask = 022 (why)" in text


def test_import_file_with_no_programs_fails(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\nnodaemon = true\n")
    with pytest.raises(ImportFailure, match="no programs to import in this supervisord.conf"):
        importers.import_file(str(conf))
    with pytest.raises(ImportFailure, match="no such file"):
        importers.import_file(str(tmp_path / "nope.conf"))
    assert os.path.isdir(tmp_path)


def test_environment_names_gsuper_cannot_take_are_notes() -> None:
    sec = pm({"script": "a.js", "env": {"GOOD": "1", "my-var": "2"}, "instance_var": "ID"})
    assert keys(sec)["environment"] == "GOOD=1, ID=%(process_num)d"
    assert skipped(sec) == {"environment my-var": "2"}
    imp = sup(("program:w", {"command": "x", "environment": "A=1,9B=2"}))
    assert keys(imp.programs[0])["environment"] == "A=1" and skipped(imp.programs[0]) == {"environment 9B": "2"}


@pytest.mark.parametrize(
    ("app", "match"),
    [
        ({"script": "a.js", "instances": "many"}, r"apps\[0\] instances: 'many' is not a whole number"),
        ({"script": "a.js", "max_restarts": "x"}, r"apps\[0\] max_restarts: 'x' is not a whole number"),
        ({"script": "a.js", "max_restarts": -2}, "out of range"),
    ],
)
def test_pm2_bad_values_fail_in_one_sentence(app: dict[str, object], match: str) -> None:
    with pytest.raises(ImportFailure, match=match):
        pm(app)


def test_rendered_imports_load_as_gsuper_configs(tmp_path: Path) -> None:
    """The printed text is a configuration gsuper's own loader takes, unchanged."""
    from gsuper import config

    task = tmp_path / "task"
    task.mkdir()
    (task / "framework.php").write_text("<?php\n")
    (task / "member_1.php").write_text("<?php class member_1 { public function run() {} }\n")
    sources = [
        legacy.convert(
            {**ORIGINAL, "workerDir": str(task), "logPath": str(tmp_path / "log"), "exec": ORIGINAL["exec"][:1]},
            str(tmp_path / "s.php"),
        ),
        pm2.convert(
            {
                "apps": [
                    {
                        "name": "a b",
                        "script": "sh",
                        "args": "-c 'sleep 1 # not a comment'",
                        "instances": 2,
                        "kill_timeout": 2500,
                        "env": {"X": "1, 2", "Y": "it's"},
                        "namespace": "web",
                    }
                ]
            },
            str(tmp_path / "e.json"),
            2,
        ),
        sup(
            (
                "program:w",
                {
                    "command": "sh -c 'echo %(program_name)s; sleep 1'",
                    "numprocs": "2",
                    "stopwaitsecs": "5",
                    "exitcodes": "0,2",
                    "stopsignal": "QUIT",
                    "umask": "022",
                },
            ),
            ("group:g", {"programs": "w"}),
            here=str(tmp_path),
        ),
    ]
    for imp in sources:
        path = tmp_path / f"{imp.kind}.ini"
        path.write_text(importers.render(imp))
        cfg = config.load(str(path))
        assert set(cfg.programs) == {p.name for p in imp.programs}, path.read_text()
    assert cfg.programs["w"].numprocs == 2 and cfg.programs["w"].stop_timeout_s == 5


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1))
def test_any_value_reads_back_unchanged_or_is_a_note(value: str) -> None:
    from gsuper.config import unquote

    sec = importers.Section("program:p")
    sec.set("command", value)
    if sec.keys:
        read = ConfigObj([f"command = {importers.ini_value(value)}"], list_values=False, interpolation=False)
        assert unquote(read["command"]) == value
    else:
        assert [s.key for s in sec.skipped] == ["command"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("ecosystem.config.js", "console.log('noise on stdout');\nmodule.exports = { apps: [{ name: 'w', script: 'w.js' }] };"),
        ("ecosystem.config.js", "module.exports = () => ({ apps: [{ name: 'w', script: 'w.js' }] });"),
        ("ecosystem.config.mjs", "export default { apps: [{ name: 'w', script: 'w.js' }] };"),
        ("ecosystem.config.cjs", "module.exports = { apps: [{ name: 'w', script: 'w.js', cwd: __dirname }] };"),
    ],
)
def test_pm2_javascript_is_loaded_as_pm2_loads_it(tmp_path: Path, name: str, code: str) -> None:
    (tmp_path / name).write_text(code)
    data = pm2.read(str(tmp_path / name))
    assert data["apps"][0]["name"] == "w"


def test_supervisor_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "supervisord.conf").write_text("[include]\nfiles = conf.d/*.conf\n")
    (tmp_path / "conf.d" / "bad.conf").write_text("[program:x]\ncommand = a\n  \nnot a line\n")
    with pytest.raises(ImportFailure, match=r"conf.d/bad.conf: line 4: "):
        supervisor.read(str(tmp_path / "supervisord.conf"))
