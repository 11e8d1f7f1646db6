"""`modelyard config check`: what `python -m orchestrator --check` would refuse
in a models.yaml, offline: every schema problem (file, model, field, reason,
from core.config), then the settings the orchestrator checks before it
serves (the bind address with auth off, the JWT key source, the tracing
headers' variables, the capture master key)."""

from __future__ import annotations

import os
from typing import Any

from core.config import ROOT_DIR, ConfigError, load_config
from orchestrator.startup_checks import startup_problems

DEFAULT_CONFIG = os.environ.get("MODELYARD_CONFIG", str(ROOT_DIR / "configs" / "models.yaml"))


def check_config(path: str) -> dict[str, Any]:
    """{"file", "ok", "models", "problems"}: problems one a line, each naming
    the file and, where it is about one, the model and the field."""
    try:
        config = load_config(path)
    except ConfigError as err:
        return {"file": path, "ok": False, "models": [], "problems": str(err).splitlines()}
    problems = [f"{path}: {problem}" for problem in startup_problems(config)]
    return {"file": path, "ok": not problems, "models": list(config.models), "problems": problems}


def render_check(result: dict[str, Any]) -> str:
    if result["ok"]:
        models = result["models"]
        return f"{result['file']}: ok ({len(models)} models{': ' if models else ''}{', '.join(models)})"
    count = len(result["problems"])
    return "\n".join([f"{result['file']}: invalid ({count} problem{'s' if count != 1 else ''})",
                      *result["problems"]])
