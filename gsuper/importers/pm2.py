"""PM2 ecosystem file → gsuper: `read` parses JSON or evaluates JS with node, `convert` maps apps.

Key meanings follow PM2's application declaration docs. PM2's defaults that differ from
gsuper's (kill_timeout 1.6 s, max_restarts 16) are written out, so the import behaves the same.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from gsuper.importers import Imported, ImportFailure, Section, evaluate, literal, safe_name, set_environment

# PM2's lib/API/interpreter.json, with python as Debian names it.
INTERPRETERS = {".sh": "bash", ".py": "python3", ".rb": "ruby", ".php": "php", ".pl": "perl", ".js": "node",
                ".cjs": "node", ".mjs": "node", ".coffee": "coffee", ".ls": "lsc", ".ts": "bun", ".tsx": "bun"}
PM2_KILL_TIMEOUT_MS = 1600
PM2_MAX_RESTARTS = 16
MARK = "\x1egsuper-import\x1e"
# node: load the file as PM2 does (require for CommonJS, import for ES modules) and print it as JSON.
NODE_SCRIPT = """
const url = require('url');
import(url.pathToFileURL(process.argv[1]).href).then(async (m) => {
  let c = m.default !== undefined ? m.default : m;
  if (typeof c === 'function') c = await c();
  process.stdout.write('\\n' + MARK + JSON.stringify(c));
}).catch((e) => { console.error('Error: ' + (e && e.message ? e.message : e)); process.exit(1); });
""".replace("MARK", json.dumps(MARK))

WHY = {
    "exec_mode": "gsuper runs every instance as its own process, as PM2's fork mode; Node's cluster port sharing is not "
    "there, so each worker binds its own port (or uses SO_REUSEPORT)",
    "watch": "gsuper does not watch files; restart with gsuper -s restart --rolling from the deploy",
    "ignore_watch": "gsuper does not watch files",
    "watch_delay": "gsuper does not watch files",
    "watch_options": "gsuper does not watch files",
    "restart_delay": "gsuper restarts a worker that was up at once and backs off only failed starts (0.1 s doubling to 10 s)",
    "exp_backoff_restart_delay": "gsuper always backs off failed starts exponentially (0.1 s doubling to 10 s)",
    "wait_ready": "gsuper counts a worker RUNNING after startsecs; a runner may report ready on GSUPER_STATUS_FD",
    "listen_timeout": "gsuper counts a worker RUNNING after startsecs",
    "shutdown_with_message": "gsuper stops workers with stopsignal, not an IPC message",
    "cron_restart": "gsuper has no scheduled restart; max_lifetime replaces workers after an age",
    "log_date_format": "gsuper prefixes every log line with its own time stamp and the worker index",
    "pid_file": "gsuper shows worker pids in status --json",
    "gid": "gsuper runs the worker with the user's primary and supplementary groups",
    "source_map_support": "a Node option gsuper does not set",
    "disable_source_map_support": "a Node option gsuper does not set",
    "instance_var": "",
    "increment_var": "gsuper sets no counter variable; %(process_num)d in environment gives one per worker",
    "vizion": "gsuper does not track versions",
    "post_update": "gsuper does not update code",
    "force": "gsuper starts a program once",
    "time": "gsuper always prefixes log lines with the time",
    "treekill": "gsuper always signals the worker's whole process group",
    "namespace": "",
    "filter_env": "gsuper adds environment to the master's; it does not filter it",
    "append_env_to_name": "gsuper names workers NAME#INDEX",
    "automation": "gsuper has no PM2.io monitoring",
    "pmx": "gsuper has no PM2.io monitoring",
    "combine_logs": "",
    "merge_logs": "",
    "log_type": "gsuper writes text lines (or JSON with [gsuper] log_format = json)",
    "min_uptime": "",
    "port": "",
}


def read(path: str) -> Any:
    """The parsed content of an ecosystem file: JSON as it is, JavaScript evaluated with node."""
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except json.JSONDecodeError as exc:
            raise ImportFailure(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise ImportFailure(f"{path}: not valid UTF-8 text") from None
    out = evaluate("node", ["-e", NODE_SCRIPT, path], path, os.path.dirname(path))
    if MARK not in out:
        raise ImportFailure(f"{path}: node printed no configuration for it")
    text = out.rpartition(MARK)[2]
    if text == "undefined" or not text:
        raise ImportFailure(f"{path}: module.exports holds nothing to import")
    return json.loads(text)


def _ms(value: Any) -> str:
    """PM2 milliseconds (a number, or a string such as "3000" or "5s") in gsuper's duration spelling."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        ms = float(text)
        return f"{ms / 1000:g}" if ms % 1000 == 0 else f"{ms:g}ms"
    return text


def _size(value: Any) -> str:
    """max_memory_restart (bytes as a number, or `150M`, `1G`, `300K`) in gsuper's size spelling."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        n = int(text)
        for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
            if n and n % size == 0:
                return f"{n // size}{unit}"
        return f"{n}B"
    return text.upper()


def _whole(source: str, where: str, value: Any) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ImportFailure(f"{source}: {where}: {value!r} is not a whole number") from None
    if n < 1 and where.endswith("instances") or n < 0:
        raise ImportFailure(f"{source}: {where}: {value!r} is out of range")
    return n


def _words(value: Any) -> list[str]:
    import shlex

    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return shlex.split(str(value))


def _env_text(env: Any) -> str:
    from gsuper.importers import env_value

    if not isinstance(env, dict):
        return str(env)
    return env_value([(str(k), _scalar(v)) for k, v in env.items()])


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else str(v)


def convert(data: Any, source: str, cpu_count: int) -> Imported:
    """Map an ecosystem file's `apps` to gsuper programs (`namespace` becomes a group)."""
    imp = Imported("pm2", source)
    if isinstance(data, dict) and "apps" in data:
        apps = data["apps"]
        for key, value in data.items():
            if key != "apps":
                why = "gsuper does not deploy code" if key == "deploy" else "not an ecosystem key gsuper knows"
                imp.skipped.append(_file_skip(key, value, why))
    elif isinstance(data, list) or (isinstance(data, dict) and "script" in data):
        apps = data
    else:
        raise ImportFailure(f"{source}: not a PM2 ecosystem file (no apps list)")
    if isinstance(apps, dict):
        apps = [apps]
    if not isinstance(apps, list):
        raise ImportFailure(f"{source}: apps: not a list of applications")
    namespaces: dict[str, list[str]] = {}
    for i, app in enumerate(apps):
        if not isinstance(app, dict):
            raise ImportFailure(f"{source}: apps[{i}]: not an application object")
        sec = _app(imp, source, i, app, cpu_count)
        ns = app.get("namespace")
        if ns and ns != "default":
            namespaces.setdefault(safe_name(str(ns)), []).append(sec.name)
    for ns, members in namespaces.items():
        if ns in {p.name for p in imp.programs}:
            continue  # a group may not share a program's name; the namespace stays a comment
        group = Section(f"group:{ns}")
        group.set("programs", ", ".join(members))
        group.comments.append(f"PM2 namespace {ns}")
        imp.groups.append(group)
    return imp


def _file_skip(key: str, value: Any, why: str) -> Any:
    from gsuper.importers import Skipped

    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return Skipped(key, text if len(text) < 200 else text[:197] + "...", why)


def _app(imp: Imported, source: str, i: int, app: dict[str, Any], cpu_count: int) -> Section:
    script = app.get("script")
    if not script:
        raise ImportFailure(f"{source}: apps[{i}]: script is required (PM2 needs it too)")
    script = str(script)
    raw_name = str(app.get("name") or os.path.splitext(os.path.basename(script))[0])
    name = safe_name(raw_name)
    sec = imp.program(name)
    if name != raw_name:
        sec.comments.append(f"PM2's name was {raw_name!r}")
    sec.set("runner", "exec")
    interpreter = app.get("interpreter", app.get("exec_interpreter"))
    ext = os.path.splitext(script)[1].lower()
    if interpreter in (None, ""):
        # As PM2: by extension; a file with none (a binary, or a name on PATH) runs as it is.
        interpreter = "none" if " " in script.strip() else INTERPRETERS.get(ext, "none" if not ext else "node")
    interpreter_args = _words(app.get("interpreter_args", app.get("node_args")))
    import shlex

    # A script with spaces and no interpreter is a command line, as `pm2 start "npm run worker"` takes it.
    words = shlex.split(script) if " " in script.strip() and interpreter == "none" else [script]
    argv = ([] if interpreter == "none" else [str(interpreter), *interpreter_args]) + [*words, *_words(app.get("args"))]
    sec.set("command", literal(shlex.join(argv)))
    if app.get("cwd"):
        sec.set("directory", literal(str(app["cwd"])))
    instances = app.get("instances", 1)
    if str(instances).strip().lower() == "max" or str(instances).strip() in ("0", "-1") or (
        isinstance(instances, int) and instances < 0
    ):
        n = max(1, cpu_count + (int(instances) if str(instances).lstrip("-").isdigit() and int(instances) < 0 else 0))
        sec.set("numprocs", n)
        sec.comments.append(f"instances = {instances}: PM2 counts CPUs; this machine has {cpu_count}")
    else:
        sec.set("numprocs", _whole(source, f"apps[{i}] instances", instances))
    env: dict[str, str] = {}
    if isinstance(app.get("env"), dict):
        env.update({str(k): literal(_scalar(v)) for k, v in app["env"].items()})
    if app.get("port") is not None:
        env["PORT"] = literal(_scalar(app["port"]))
    instance_var = str(app.get("instance_var") or "NODE_APP_INSTANCE")
    env.setdefault(instance_var, "%(process_num)d")  # PM2 gives each instance its number there
    set_environment(sec, list(env.items()))
    if "max_memory_restart" in app:
        sec.set("memory_limit", _size(app["max_memory_restart"]))
    sec.set("stop_timeout", _ms(app.get("kill_timeout", PM2_KILL_TIMEOUT_MS)))
    if "kill_timeout" not in app:
        sec.comments.append("stop_timeout = 1600ms is PM2's kill_timeout default, written out (gsuper's default is 10)")
    sec.set("startretries", min(1000, _whole(source, f"apps[{i}] max_restarts", app.get("max_restarts", PM2_MAX_RESTARTS))))
    if "min_uptime" in app:
        sec.set("startsecs", _ms(app["min_uptime"]))
    autorestart = app.get("autorestart", True)
    if autorestart in (False, "false"):
        sec.set("autorestart", "false")
    elif app.get("stop_exit_codes") is not None:
        codes = app["stop_exit_codes"]
        codes = codes if isinstance(codes, list) else [codes]
        sec.set("autorestart", "unexpected")
        sec.set("exitcodes", ", ".join(str(c) for c in codes))
    else:
        sec.set("autorestart", "true")
    if app.get("uid") is not None:
        sec.set("user", str(app["uid"]))
    out_file, error_file = app.get("out_file", app.get("output")), app.get("error_file", app.get("error"))
    log_file = app.get("log_file")
    if out_file:
        sec.set("logfile", "/dev/null" if out_file == "NULL" else literal(str(out_file)))
    elif log_file and log_file is not True:
        sec.set("logfile", literal(str(log_file)))
    if error_file:
        sec.set("stderr_logfile", "/dev/null" if error_file == "NULL" else literal(str(error_file)))
    if log_file and out_file:
        sec.skip("log_file", log_file, "gsuper writes each stream to one file: logfile, and stderr_logfile when set")
    if app.get("merge_logs") or app.get("combine_logs"):
        sec.comments.append("merge_logs: what gsuper always does (one log per program, each line with the worker index)")
    exec_mode = str(app.get("exec_mode", "fork")).replace("_mode", "")
    handled = {"name", "script", "interpreter", "exec_interpreter", "interpreter_args", "node_args", "args", "cwd",
               "instances", "env", "port", "instance_var", "max_memory_restart", "kill_timeout", "max_restarts",
               "min_uptime", "autorestart", "stop_exit_codes", "uid", "out_file", "output", "error_file", "error",
               "log_file", "merge_logs", "combine_logs", "namespace"}
    for key, value in app.items():
        if key in handled:
            continue
        if key == "exec_mode" and exec_mode == "fork":
            continue
        if key.startswith("env_"):
            sec.skip(key, _env_text(value), f"PM2 applies it only with --env {key[4:]}; merge it into environment to use it")
        elif key in ("watch", "treekill") and value is (key == "treekill"):
            continue  # watch = false, treekill = true: what gsuper does anyway
        else:
            sec.skip(key, _scalar(value), WHY.get(key) or "not a PM2 application key gsuper knows")
    return sec
