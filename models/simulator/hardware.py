"""The hardware the simulator predicts for: a catalog of accelerators
(configs/hardware.yaml, datasheet peaks) and this host's own devices.

A GPU of this host found in the catalog (by its NVML name) keeps the catalog's
throughput figures, which NVML cannot report, but takes the memory NVML
measured; a GPU the catalog does not know stands in as the weakest catalog GPU,
so predictions for it err slow rather than fast, and says so. The host CPU is
measured (a memory copy and a matmul, about two seconds) once per CPU model,
core count and numpy version, then read from a cache in the state directory.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.config import ROOT_DIR
from core.gpu import GIB, Inventory

CATALOG_PATH = ROOT_DIR / "configs" / "hardware.yaml"
# Quantization methods by the tensor-core rate they run at (names as core.memory_estimate spells them).
FP16_METHODS = (None, "auto", "fp16", "float16", "half", "bf16", "bfloat16")
INT8_METHODS = ("int8", "fp8")
INT4_METHODS = ("int4", "awq", "gptq", "bitsandbytes")


class CatalogError(ValueError):
    """The hardware catalog cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "gpu" | "cpu"
    vendor: str
    memory_gb: float
    bandwidth_gbps: float
    fp16_tflops: float
    int8_tops: float
    int4_tops: float
    interconnect_gbps: float
    interconnect_latency_us: float
    cost_per_hour: float
    aliases: tuple[str, ...] = ()
    source: str = "catalog"  # "catalog" | "nvml" | "simulated" (an inventory's GPU) | "measured"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "aliases": list(self.aliases)}

    def peak_tflops(self, quantization: str | None = None) -> float:
        """Peak matrix throughput (TFLOPS or TOPS) at the rate this quantization runs at.
        A rate the device lacks (0) falls back to the next wider one: INT4 to INT8 to FP16."""
        method = quantization.lower() if isinstance(quantization, str) else quantization
        if method in FP16_METHODS:
            return self.fp16_tflops
        if method in INT8_METHODS:
            return self.int8_tops or self.fp16_tflops
        if method in INT4_METHODS:
            return self.int4_tops or self.int8_tops or self.fp16_tflops
        known = ", ".join(str(m) for m in FP16_METHODS + INT8_METHODS + INT4_METHODS)
        raise ValueError(f"unknown quantization {quantization!r}; expected one of {known}")


@dataclass(frozen=True)
class HostDevice:
    device: Device
    count: int
    note: str


class _Entry(BaseModel):
    # strict: "80" (a string) or `yes` is a mistake in the file, not a number to coerce
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["gpu", "cpu"]
    vendor: str = Field(min_length=1)
    memory_gb: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    fp16_tflops: float = Field(gt=0)
    int8_tops: float = Field(ge=0)
    int4_tops: float = Field(ge=0)
    interconnect_gbps: float = Field(ge=0)
    interconnect_latency_us: float = Field(ge=0)
    cost_per_hour: float = Field(gt=0)
    aliases: list[Annotated[str, Field(min_length=1)]] = []


def _problem(where: str, name: str, error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"])
    got = "" if error["type"] == "missing" else f" (got {error['input']!r})"
    msg = "must be a mapping of field to value" if error["type"] == "model_type" else error["msg"]
    return f"{where}: entry '{name}'" + (f", field '{field}'" if field else "") + f": {msg}{got}"


def load_catalog(path: Path | None = None) -> dict[str, Device]:
    """Name -> Device of every entry of the catalog (default configs/hardware.yaml)."""
    path = Path(path) if path is not None else CATALOG_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CatalogError(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or not data:
        got = {dict: "an empty mapping", type(None): "an empty file"}.get(type(data), type(data).__name__)
        raise CatalogError(f"{path}: the top level must be a mapping of device name to figures, not {got}")
    catalog: dict[str, Device] = {}
    problems: list[str] = []
    owner: dict[str, str] = {}  # lower-cased alias -> the entry that claims it
    for name, raw in data.items():
        try:
            entry = _Entry.model_validate(raw)
        except ValidationError as exc:
            problems += [_problem(str(path), str(name), e) for e in exc.errors()]
            continue
        for alias in entry.aliases:
            if (other := owner.setdefault(alias.lower(), str(name))) != str(name):
                problems.append(f"{path}: entry '{name}', field 'aliases': {alias!r} is also an alias of '{other}'")
        catalog[str(name)] = Device(name=str(name), **{**entry.model_dump(), "aliases": tuple(entry.aliases)})
    if problems:
        raise CatalogError("\n".join(problems))
    return catalog


def match_gpu(nvml_name: str, catalog: dict[str, Device]) -> Device | None:
    """The catalog GPU one of whose aliases occurs in nvml_name as whole words ("L4" is
    not in "NVIDIA L40S"), case-insensitively; the longest matching alias wins."""
    best: tuple[int, Device] | None = None
    for device in catalog.values():
        if device.kind != "gpu":
            continue
        for alias in device.aliases:
            if re.search(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", nvml_name, re.IGNORECASE):
                if best is None or len(alias) > best[0]:
                    best = (len(alias), device)
    return best[1] if best else None


def _cpu_info() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _best_time(run: Callable[[], object], budget_s: float, max_runs: int = 8) -> float:
    """The fastest of at least two runs, more while the budget lasts (the first pays for page faults)."""
    best, start = float("inf"), time.perf_counter()
    for i in range(max_runs):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - start > budget_s:
            break
    return best


def _copy_gbps(budget_s: float) -> float:
    """Memory bandwidth from copying a float32 array far larger than any cache."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    src = np.ones(min(256 * 1024**2, ram // 16) // 4, dtype=np.float32)  # two must fit comfortably
    dst = np.empty_like(src)
    # STREAM's convention: a copy moves its bytes twice (read, then write).
    return 2 * src.nbytes / _best_time(lambda: np.copyto(dst, src), budget_s) / 1e9


def _measure(budget_s: float) -> tuple[float, float]:
    """(memory bandwidth GB/s, float32 matmul TFLOPS) of this host, in about budget_s."""
    bandwidth = _copy_gbps(0.4 * budget_s)
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    t0 = time.perf_counter()
    a[:1024, :1024] @ a[:1024, :1024]
    # A 1024 matmul is too small to fill a big server, a 2048 one too slow for a small box.
    n = 2048 if time.perf_counter() - t0 < 0.02 * budget_s else 1024
    m = np.ascontiguousarray(a[:n, :n])
    seconds = _best_time(lambda: m @ m, 0.5 * budget_s)
    return bandwidth, 2 * n**3 / seconds / 1e12


def measure_cpu(state_dir: Path, *, budget_s: float = 2.0) -> Device:
    """This host's CPU as a Device, measured once and cached in <state_dir>/simulator/host_cpu.json."""
    info = _cpu_info()
    key = {"cpu": info.get("model name") or platform.processor() or platform.machine(),
           "logical_cpus": os.cpu_count(), "numpy": np.__version__}
    cache = Path(state_dir) / "simulator" / "host_cpu.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            device = Device(**{**cached["device"], "aliases": tuple(cached["device"]["aliases"])})
            if device.bandwidth_gbps > 0 and device.fp16_tflops > 0 and device.memory_gb > 0:
                return device
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache, another host's, or a damaged one: measure again
    bandwidth, tflops = _measure(budget_s)
    device = Device(
        name="host-cpu",
        kind="cpu",
        vendor={"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(info.get("vendor_id", ""), "unknown"),
        memory_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 2),
        bandwidth_gbps=round(bandwidth, 2),
        # CPU inference runs BF16 at about the FP32 rate on most hosts (no AMX),
        # so the FP32 matmul stands for FP16 and, for want of better, INT8/INT4.
        fp16_tflops=round(tflops, 4),
        int8_tops=round(tflops, 4),
        int4_tops=round(tflops, 4),
        interconnect_gbps=0,
        interconnect_latency_us=0,
        cost_per_hour=0,  # our own box
        source="measured",
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "device": device.as_dict()}, indent=2))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only state dir costs a measurement next time, nothing more
    return device


def host_devices(
    inventory: Inventory, catalog: dict[str, Device], state_dir: Path, *,
    measure: Callable[[Path], Device] = measure_cpu,
) -> list[HostDevice]:
    """This host's GPUs, one HostDevice per GPU name, then the measured host CPU."""
    groups: dict[str, list] = {}
    for gpu in inventory.gpus:
        groups.setdefault(gpu.name, []).append(gpu)
    gpus = [d for d in catalog.values() if d.kind == "gpu"]
    weakest = min(gpus, key=lambda d: (d.fp16_tflops, d.bandwidth_gbps)) if gpus else None
    result = []
    for name, cards in groups.items():
        memory_gb = round(min(g.total_bytes for g in cards) / GIB, 2)
        where = f"{len(cards)} x {name} (GPU {', '.join(str(g.index) for g in cards)}, {inventory.source})"
        if (entry := match_gpu(name, catalog)) is not None:
            device = replace(entry, memory_gb=memory_gb, source=inventory.source)
            note = f"{where}: figures of catalog entry '{entry.name}', memory as reported ({memory_gb} GiB)"
        elif weakest is not None:
            device = replace(weakest, name=name, vendor="unknown", memory_gb=memory_gb, aliases=(),
                             source=inventory.source)
            note = (f"{where}: not in the catalog, so its throughput is unknown; it is given the figures of "
                    f"'{weakest.name}', the weakest catalog GPU, and its own memory ({memory_gb} GiB)")
        else:
            raise CatalogError(f"GPU {name!r} is not in the catalog, which has no GPU entry to stand in for it")
        result.append(HostDevice(device, len(cards), note))
    cpu = measure(state_dir)
    cpu_name = _cpu_info().get("model name") or platform.machine()
    note = f"{cpu_name}, {os.cpu_count()} logical CPUs: memory bandwidth and matmul throughput measured here"
    result.append(HostDevice(cpu, 1, note))
    return result
