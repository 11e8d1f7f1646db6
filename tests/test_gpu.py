"""GPU inventory: absence said plainly, a simulated inventory served like a
real one, and the NVML reading code run against a stand-in for the library
(the only part that cannot exist on a host without an NVIDIA GPU)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from core.gpu import GIB, from_nvml
from tests.conftest import fake_model


def test_without_a_gpu_the_orchestrator_says_so(orchestrator):
    orch = orchestrator({"models": {"m": fake_model()}})
    with orch.client() as client:
        body = client.get("/admin/gpus").json()
    assert body["source"] == "none" and body["gpus"] == []
    assert "NVML" in body["reason"]
    assert "no GPU: " in orch.log() and "run on the CPU" in orch.log()


def test_a_simulated_inventory_is_served_like_a_real_one(orchestrator):
    gpus = [{"name": "H100 (simulated)", "memory_gb": 80}, {"name": "L4 (simulated)", "memory_gb": 24}]
    orch = orchestrator({"settings": {"gpus": gpus}, "models": {"m": fake_model()}})
    with orch.client() as client:
        body = client.get("/admin/gpus").json()
    assert body["source"] == "simulated"
    assert [(g["index"], g["name"], g["total_gb"]) for g in body["gpus"]] == [
        (0, "H100 (simulated)", 80.0),
        (1, "L4 (simulated)", 24.0),
    ]
    assert "GPUs (simulated): 0: H100 (simulated) 80 GB, 1: L4 (simulated) 24 GB" in orch.log()


def test_a_bad_simulated_gpu_is_a_config_error(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text("settings:\n  gpus:\n    - {name: x, memory_gb: -1}\n")
    with pytest.raises(ConfigError, match=r"field 'settings.gpus.0.memory_gb': Input should be greater than 0"):
        load_config(path)


class _NVMLError(Exception):
    pass


def _fake_nvml(cards: list[tuple[str, int, int]], processes: dict[int, list[tuple[int, int]]], init_error: str | None = None):
    """A stand-in for pynvml with the calls core.gpu makes."""
    module = types.ModuleType("pynvml")
    module.NVMLError = _NVMLError

    def init() -> None:
        if init_error:
            raise _NVMLError(init_error)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(cards)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: cards[h][0].encode()
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=cards[h][1], used=cards[h][2])
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37)
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes.get(h, [])
    ]
    return module


def test_nvml_inventory_reads_memory_utilization_and_processes(monkeypatch):
    nvml = _fake_nvml([("NVIDIA H100 80GB HBM3", 80 * GIB, 10 * GIB), ("NVIDIA H100 80GB HBM3", 80 * GIB, 0)],
                      {0: [(4242, 9 * GIB)]})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = from_nvml()
    assert inventory.source == "nvml" and inventory.reason is None
    first = inventory.gpus[0]
    assert (first.index, first.name, first.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-0")
    assert (first.total_bytes, first.used_bytes, first.utilization_percent) == (80 * GIB, 10 * GIB, 37)
    assert first.processes == {4242: 9 * GIB} and inventory.gpus[1].processes == {}


def test_nvml_that_cannot_start_means_no_gpu_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([], {}, init_error="Driver Not Loaded"))
    inventory = from_nvml()
    assert inventory.source == "none" and inventory.gpus == []
    assert inventory.reason == "no NVIDIA GPU usable: NVML says Driver Not Loaded"
