"""Run one engine's server.py as the orchestrator would: a real process with
its engine's own interpreter, on a free port, logging to a file."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.process import free_port
from tests.conftest import ROOT


def engine_python(engine: str) -> Path:
    """The engine's interpreter: MODELYARD_<ENGINE>_PYTHON, else state/envs/<engine>."""
    variable = f"MODELYARD_{engine.upper()}_PYTHON"
    path = Path(os.environ.get(variable, ROOT / "state" / "envs" / engine / "bin" / "python"))
    if not path.exists():
        pytest.fail(f"{engine} engine environment not found ({path}); run ./scripts/install.sh --engine {engine}")
    return path


def prepared_model(variable: str, default: str, marker: str) -> Path:
    """A model directory that install.sh prepares (override with the variable)."""
    path = Path(os.environ.get(variable, ROOT / "state" / "models" / default))
    if not (path / marker).exists():
        pytest.fail(f"model directory not found ({path}); run ./scripts/install.sh first")
    return path


@dataclass
class Engine:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_engine(engine: str, log_path: Path, *argv: str, timeout: float = 120) -> Engine:
    """models/<engine>/server.py started with argv, once /health says 200."""
    port = free_port()
    command = [str(engine_python(engine)), str(ROOT / "models" / engine / "server.py"), "--port", str(port), *argv]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    started = Engine(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{engine} engine exited with {process.returncode} while loading:\n{started.log()[-3000:]}")
        try:
            if httpx.get(started.url + "/health", timeout=2).status_code == 200:
                return started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    started.stop()
    pytest.fail(f"{engine} engine not healthy within {timeout:.0f} s:\n{started.log()[-3000:]}")
