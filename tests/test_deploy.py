"""deploy/: the manifests parsed (PyYAML) and cross-checked against the shipped gsuper.ini, the
systemd unit verified by systemd-analyze. No container engine runs on this machine (only the
docker client is installed), so the image is not built here: the Dockerfile is checked as text."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from gsuper import config

yaml = pytest.importorskip("yaml")

DEPLOY = ROOT / "deploy"
# CONTRACT.md "Watching it": the HTTP paths of [gsuper] http (built on branch issue-12).
HTTP_PATHS = {"/metrics", "/status.json", "/healthz", "/readyz", "/"}


def manifests():
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def pod_ini_text():
    return manifests()["ConfigMap"]["data"]["gsuper.ini"]


def load_pod_config(tmp_path):
    """The pods' gsuper.ini validated by gsuper itself, its /app paths pointed at this checkout
    (the image copies examples/ to /app/examples)."""
    text = pod_ini_text().replace("/app/", f"{ROOT}/").replace("/run/gsuper", str(tmp_path / "run"))
    if "http = " not in config.SPEC_GSUPER:  # [gsuper] http and http_token come with issue 12
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("http ", "http_token")))
    path = tmp_path / "gsuper.ini"
    path.write_text(text)
    return config.load(str(path))


def test_the_image_and_the_configmap_ship_the_same_gsuper_ini():
    assert pod_ini_text() == (DEPLOY / "docker" / "gsuper.ini").read_text()


def test_the_pod_config_is_valid_and_logs_to_stdout(tmp_path):
    cfg = load_pod_config(tmp_path)
    assert cfg.logs_to_stdout and cfg.on_fatal == "exit"
    assert cfg.programs and all(p.directory.startswith(str(ROOT)) for p in cfg.programs.values())


def test_deployment_probes_grace_period_and_resources(tmp_path):
    docs = manifests()
    assert {"Deployment", "ConfigMap", "ScaledObject"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["gsuper", "-s", "start", "--foreground"]
    probes = {name: container[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    for probe in (*probes.values(), container["startupProbe"]["httpGet"]):
        assert probe["path"] in HTTP_PATHS
        port = probe["port"]
        assert port == "http" and any(p["name"] == port for p in container["ports"])
    ini = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None)
    ini.read_string(pod_ini_text())
    http_port = int(ini["gsuper"]["http"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "http"] == [http_port]
    cfg = load_pod_config(tmp_path)
    grace = pod["terminationGracePeriodSeconds"]
    assert all(grace > p.stop_timeout_s for p in cfg.programs.values())
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GSUPER_GRACE_SECONDS"] == str(grace)  # what check compares stop_timeout with
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # The pod's memory limit holds every worker at its memory_limit (Mi here, bytes in gsuper).
    limit_mi = int(re.fullmatch(r"(\d+)Mi", container["resources"]["limits"]["memory"])[1])
    workers_mi = sum(p.numprocs * p.memory_limit_bytes for p in cfg.programs.values()) / 2**20
    assert limit_mi > workers_mi
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(Path(container["command"][-1]).parent)] == "config"
    assert any(v["name"] == "config" and v["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"] for v in pod["volumes"])


def test_keda_scales_the_list_the_consumers_read_and_gsuper_does_not(tmp_path):
    docs = manifests()
    scaled = docs["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    cfg = load_pod_config(tmp_path)
    for program in cfg.programs.values():
        env = dict(program.environment)
        assert meta["listName"] == env["QUEUE"]
        assert meta["address"] == f"{env['REDIS_HOST']}:{env['REDIS_PORT']}"
        # Two scalers must not drive one queue: no in-pod autoscaling when KEDA scales pods.
        assert getattr(program, "numprocs_max", program.numprocs) == program.numprocs
        assert getattr(program, "scale_source", None) is None
    assert not re.search(r"^\s*(numprocs_max|scale_source)\s*=", pod_ini_text(), re.M)
    # listLength is per pod: the pod's workers times the jobs each should have waiting.
    per_pod = sum(p.numprocs for p in cfg.programs.values())
    assert int(meta["listLength"]) % per_pod == 0
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


def test_dockerfile():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:\S+-slim$", text, re.M)
    assert "php-cli" in text and "pip install --no-cache-dir /src" in text
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and "--foreground" in cmd[1] and "/etc/gsuper/gsuper.ini" in cmd[1]
    assert "COPY deploy/docker/gsuper.ini /etc/gsuper/gsuper.ini" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "run", "log"} <= set(ignored)  # `COPY . /src` takes the checkout, not its venvs


def test_systemd_unit_against_the_shipped_config():
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / "systemd" / "gsuper.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillMode"] == "mixed"
    assert "--foreground" in service["ExecStart"] and "-s reload" in service["ExecReload"]
    assert int(service["WatchdogSec"]) > 0 and int(service["LimitNOFILE"]) >= 4096
    shipped = config.load(str(ROOT / "gsuper.ini"))
    longest = max(p.stop_timeout_s for p in shipped.programs.values())
    assert int(service["TimeoutStopSec"]) > longest + 10  # the drain ends before systemd's SIGKILL
    pod_longest = max(float(v) for v in re.findall(r"^\s*stop_timeout\s*=\s*(\d+)", pod_ini_text(), re.M))
    assert int(service["TimeoutStopSec"]) > pod_longest


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # /usr/local/bin/gsuper is where the unit expects an installed gsuper; here, the checkout's.
    launcher = tmp_path / "gsuper"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {BIN} \"$@\"\n")
    launcher.chmod(0o755)
    unit = tmp_path / "gsuper.service"
    unit.write_text((DEPLOY / "systemd" / "gsuper.service").read_text().replace("/usr/local/bin/gsuper", str(launcher)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mine = [ln for ln in proc.stderr.splitlines() if str(unit) in ln or "gsuper.service" in ln]
    assert mine == [], mine  # an unknown or misspelt key is only a warning: none may appear
