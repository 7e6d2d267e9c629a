"""`check` under an orchestrator: a stop_timeout longer than the grace period it gives.

Kubernetes sends SIGTERM, then SIGKILL after `terminationGracePeriodSeconds`; a worker whose
`stop_timeout` is longer would be killed mid-request before gsuper's own SIGKILL. The
Deployment passes its grace period in `GSUPER_GRACE_SECONDS`, and `check` warns (exit 0).
"""

from __future__ import annotations

from collections.abc import Mapping

from gsuper.config import GsuperConfig, parse_duration

GRACE_VAR = "GSUPER_GRACE_SECONDS"


def grace_warnings(cfg: GsuperConfig, environ: Mapping[str, str]) -> list[str]:
    """One sentence per program whose stop_timeout exceeds GSUPER_GRACE_SECONDS (if set)."""
    raw = environ.get(GRACE_VAR, "").strip()
    if not raw:
        return []
    try:
        grace_s = parse_duration(raw)
    except ValueError:
        return [f"{GRACE_VAR}={raw!r} is not a number of seconds; the stop timeouts were not compared to it"]
    return [
        f"{cfg.path}: [program:{p.name}] stop_timeout: {p.stop_timeout_s:g}s is above {GRACE_VAR}={grace_s:g}: "
        "the orchestrator will SIGKILL the worker before gsuper's own stop_timeout ends"
        for p in cfg.programs.values()
        if p.stop_timeout_s > grace_s
    ]
