"""GPU inventory: what the host's accelerators are and how much memory is in use.

Three sources, one shape, so the scheduler's code is the same everywhere:
- `simulated`: declared in models.yaml (`settings.gpus`), for CPU hosts and tests;
- `nvml`: NVIDIA's management library (nvidia-ml-py), on an NVIDIA host;
- `none`: no GPU; the reason says why (no driver, no library), and host
  memory is the only budget.

Verified here only without a GPU (`none` and `simulated`); the NVML path has
not run on a real GPU yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3


@dataclass
class GPU:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    utilization_percent: int | None = None
    uuid: str | None = None
    # pid -> bytes, for processes NVML reports on this GPU
    processes: dict[int, int] = field(default_factory=dict)

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GIB

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_gb"] = round(self.total_bytes / GIB, 2)
        data["used_gb"] = round(self.used_bytes / GIB, 2)
        data["processes"] = {str(pid): used for pid, used in self.processes.items()}
        return data


@dataclass
class Inventory:
    source: str  # "nvml", "simulated" or "none"
    gpus: list[GPU]
    reason: str | None = None  # why there is no GPU, when source is "none"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "gpus": [g.as_dict() for g in self.gpus]}


def simulated(declared: list[dict[str, Any]]) -> Inventory:
    """An inventory from settings.gpus: [{name, memory_gb}, ...]."""
    gpus = [
        GPU(index=i, name=str(d["name"]), total_bytes=int(float(d["memory_gb"]) * GIB), used_bytes=0)
        for i, d in enumerate(declared)
    ]
    return Inventory("simulated", gpus)


def from_nvml() -> Inventory:
    """The host's NVIDIA GPUs, or an empty inventory saying why there are none."""
    try:
        import pynvml
    except ImportError:
        return Inventory("none", [], "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Inventory("none", [], f"no NVIDIA GPU usable: NVML says {exc}")
    try:
        gpus = [_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        return Inventory("none", [], f"NVML failed while listing GPUs: {exc}")
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        return Inventory("none", [], "NVML found no GPU")
    return Inventory("nvml", gpus)


def _read_gpu(nvml: Any, index: int) -> GPU:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:  # not supported on every board (e.g. some MIG setups)
        utilization = None
    processes: dict[int, int] = {}
    try:
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            processes[int(proc.pid)] = int(proc.usedGpuMemory or 0)
    except nvml.NVMLError:
        pass
    name = nvml.nvmlDeviceGetName(handle)
    uuid = nvml.nvmlDeviceGetUUID(handle)
    return GPU(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        total_bytes=int(memory.total),
        used_bytes=int(memory.used),
        utilization_percent=utilization,
        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
        processes=processes,
    )


def discover(declared: list[dict[str, Any]] | None) -> Inventory:
    """The simulated inventory if one is declared, else what NVML sees."""
    return simulated(declared) if declared else from_nvml()


if __name__ == "__main__":
    import json

    print(json.dumps(from_nvml().as_dict(), indent=2))
