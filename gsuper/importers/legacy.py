"""The original PHP process manager's serviceConf.php → gsuper.

`read` evaluates the file with php, merged over a globalConfig.php beside it (as the original
merges them: the service's keys win); `convert` maps each `exec` entry to a php program as
CONTRACT.md fixes: the original requires the `workerLoadFileBefore` files and then
`workerDir/NAME.php`, instantiates the class NAME and calls `run()` on it, and sleeps
`sleepTime` microseconds between runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gsuper.importers import Imported, ImportFailure, Section, evaluate, literal, safe_name

# php: each file returns an array; later files win, key by key, as array_merge does. Output a
# config file might echo is discarded, so only the JSON reaches stdout.
PHP_SCRIPT = r"""
$merged = [];
foreach (array_slice($argv, 1) as $file) {
    ob_start();
    $conf = require $file;
    ob_end_clean();
    if (!is_array($conf)) { fwrite(STDERR, "Error: $file does not return an array\n"); exit(1); }
    $merged = array_merge($merged, $conf);
}
echo json_encode($merged, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PARTIAL_OUTPUT_ON_ERROR);
"""

GLOBAL_KEYS = {
    "logSaveFileApp": "gsuper writes the master's log to logdir/gsuper.log",
    "logSaveFileWorker": "gsuper writes each program's output to logdir/NAME.log",
    "processName": "gsuper names the master and workers itself (gsuper: NAME#INDEX)",
    "redis": "settings for the business code, not for the process manager; the task code reads its own",
}
ENTRY_KEYS = ("name", "files", "max_request", "memory_limit", "workNum")


def read(path: str) -> dict[str, Any]:
    """The configuration array of a serviceConf.php (over globalConfig.php beside it), evaluated with php."""
    files = [path]
    beside = os.path.join(os.path.dirname(path), "globalConfig.php")
    if os.path.isfile(beside) and os.path.abspath(beside) != os.path.abspath(path):
        files.insert(0, beside)
    out = evaluate("php", ["-d", "display_errors=stderr", "-r", PHP_SCRIPT, *files], path, os.path.dirname(path))
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise ImportFailure(f"{path}: php gave no configuration array for it") from None
    if not isinstance(data, dict):
        raise ImportFailure(f"{path}: its array has no 'exec' list, so nothing to import")
    data["__files__"] = files
    return data


def _int(source: str, where: str, value: Any, minimum: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ImportFailure(f"{source}: {where}: {value!r} is not a whole number") from None
    if n < minimum:
        raise ImportFailure(f"{source}: {where}: must be at least {minimum} (got {n})")
    return n


def convert(conf: dict[str, Any], source: str) -> Imported:
    """Map the original's configuration array to gsuper programs (and a group for moduleName)."""
    imp = Imported("legacy", source)
    here = os.path.dirname(source)
    files = conf.get("__files__", [source])
    if len(files) > 1:
        imp.warnings.append(f"merged over {files[0]}, as the original does")
    entries = conf.get("exec")
    if isinstance(entries, dict):
        entries = list(entries.values())
    if not isinstance(entries, list):
        raise ImportFailure(f"{source}: its array has no 'exec' list, so nothing to import")
    worker_dir = str(conf.get("workerDir") or here)
    before = conf.get("workerLoadFileBefore") or []
    if isinstance(before, dict):
        before = list(before.values())
    if not isinstance(before, list):
        before = [before]
    sleep = conf.get("sleepTime")
    if conf.get("logPath"):
        imp.gsuper.set("logdir", os.path.normpath(str(conf["logPath"])))
    if conf.get("pidPath"):
        imp.gsuper.set("rundir", os.path.normpath(str(conf["pidPath"])))
    for key, value in conf.items():
        if key in ("exec", "workerDir", "workerLoadFileBefore", "sleepTime", "logPath", "pidPath", "moduleName", "__files__"):
            continue
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
        from gsuper.importers import Skipped

        imp.skipped.append(Skipped(key, text, GLOBAL_KEYS.get(key, "not a key of the original gsuper knows")))
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ImportFailure(f"{source}: exec[{i}]: an entry needs a 'name' (the task's class and file)")
        _entry(imp, source, i, entry, os.path.normpath(worker_dir), [str(b) for b in before], sleep)
    module = conf.get("moduleName")
    if module and imp.programs:
        group = Section(f"group:{safe_name(str(module))}")
        group.set("programs", ", ".join(p.name for p in imp.programs))
        group.comments.append("moduleName of the original")
        imp.groups.append(group)
    return imp


def _entry(imp: Imported, source: str, i: int, entry: dict[str, Any], worker_dir: str, before: list[str], sleep: Any) -> None:
    task = str(entry["name"])
    sec = imp.program(safe_name(task))
    where = f"exec[{i}] ({task})"
    sec.set("runner", "php")
    sec.set("handler", f"{task}::run")
    task_file = str(entry.get("files") or task)
    if not task_file.endswith(".php"):
        task_file += ".php"
    hooks = [os.path.join(worker_dir, f) for f in [*before, task_file]]
    sec.set("bootstrap", ", ".join(hooks))
    sec.set("directory", literal(worker_dir))
    sec.set("numprocs", _int(source, f"{where} workNum", entry.get("workNum", 1), 1))
    if entry.get("max_request"):
        sec.set("max_request", _int(source, f"{where} max_request", entry["max_request"], 0))
    if entry.get("memory_limit"):
        sec.set("memory_limit", f"{_int(source, f'{where} memory_limit', entry['memory_limit'], 0)}M")
    if sleep is not None:
        sec.set("usleep", _int(source, "sleepTime", sleep, 0))
    for key, value in entry.items():
        if key not in ENTRY_KEYS:
            sec.skip(key, value, "not a key of the original's exec entries gsuper knows")
