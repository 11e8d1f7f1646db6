"""Fixtures that run the orchestrator the way a user does: as a real process,
with a real models.yaml, on a state directory of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.instance import instance_id  # noqa: E402
from core.process import INSTANCE_ENV, free_port  # noqa: E402

FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"


def fake_model(flags: str = "", **fields: Any) -> dict[str, Any]:
    """A models.yaml entry that runs the fake service with the given flags."""
    return {"engine": "command", "cmd": f"{FAKE} {flags}".strip(), **fields}


def instance_processes(state_dir: Path) -> list[psutil.Process]:
    """Every live process started on behalf of the orchestrator of state_dir."""
    tag = instance_id(state_dir)
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(INSTANCE_ENV) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def wait_until(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


@dataclass
class Orchestrator:
    url: str
    process: subprocess.Popen[str]
    state_dir: Path
    config_path: Path
    log_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def services(self) -> dict[str, dict[str, Any]]:
        with self.client() as client:
            return {s["id"]: s for s in client.get("/admin/services").json()["services"]}

    def service_url(self, model_id: str) -> str:
        return f"http://127.0.0.1:{self.services()[model_id]['port']}"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orchestrator(
    tmp_path: Path,
    config: dict[str, Any],
    extra_env: dict[str, str] | None = None,
    name: str = "orch",
    state_dir: Path | None = None,
) -> Orchestrator:
    state = state_dir or tmp_path / f"{name}-state"
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / f"{name}.log"
    env = {**os.environ, "MODELYARD_STATE_DIR": str(state), **(extra_env or {})}
    with log_path.open("w") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--config", str(config_path), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    orch = Orchestrator(f"http://127.0.0.1:{port}", process, state, config_path, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"orchestrator exited with {process.returncode}:\n{orch.log()}")
        try:
            return httpx.get(orch.url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(ready, 30), f"orchestrator not ready:\n{orch.log()}"
    return orch


class OrchestratorPool:
    """Starts orchestrators for a test (or a module) and, at the end, stops
    them all and checks that no process of theirs is left behind."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Orchestrator] = []

    def start(self, config: dict[str, Any], **kwargs: Any) -> Orchestrator:
        orch = start_orchestrator(self.tmp_path, config, name=f"orch{len(self.started)}", **kwargs)
        self.started.append(orch)
        return orch

    def close(self) -> None:
        for orch in self.started:
            orch.stop()
        for orch in self.started:
            assert wait_until(lambda: not instance_processes(orch.state_dir), 10), (
                f"processes left behind: {[p.cmdline() for p in instance_processes(orch.state_dir)]}"
            )


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[Any]:
    """start(config) -> Orchestrator, for one test."""
    pool = OrchestratorPool(tmp_path)
    yield pool.start
    pool.close()


@pytest.fixture(scope="module")
def module_orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """start(config) -> Orchestrator, shared by a module's tests."""
    pool = OrchestratorPool(tmp_path_factory.mktemp("module"))
    yield pool.start
    pool.close()


@pytest.fixture
def fake_cuda_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An engine environment whose python finds a stand-in for vLLM's CUDA build
    (tests/support/fake_vllm), for an orchestrator whose state is tmp_path/state.
    Returns a model directory to serve."""
    python = tmp_path / "envs" / "vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    fake = ROOT / "tests" / "support" / "fake_vllm"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{fake}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("MODELYARD_ENVS_DIR", str(tmp_path / "envs"))
    (tmp_path / "state").mkdir()
    weights = tmp_path / "weights"
    weights.mkdir()
    return weights
