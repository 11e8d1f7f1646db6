"""How much memory a service needs, and what it really used.

The need, in order: `memory_gb` from models.yaml; else the peak measured the
last time this configuration ran (footprints.py, kept in sqlite); else an
estimate from the model directory's config.json and weight files
(core/memory_estimate.py); else, on GPUs, the whole card (a service of unknown
size must not share one: engines such as vLLM take what they are told they
may), and in host memory 0 (unknown).

While a service runs its memory is followed: host memory (the process tree's
RSS) for a service on the CPU; on NVIDIA GPUs, what NVML reports for its
processes. Simulated GPUs have nothing to measure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from core.config import Config
from core.engines import placeholder_values
from core.gpu import GIB, Inventory, from_nvml
from core.logs import log_event
from core.memory_estimate import estimate_memory
from core.process import ServiceProcess
from orchestrator.footprints import Footprint, Footprints
from orchestrator.placement import Pool

if TYPE_CHECKING:
    from orchestrator.scheduler import Service

log = logging.getLogger("modelyard.sizing")
MEASURE_INTERVAL = 5.0


class Sizing:
    def __init__(self, inventory: Inventory, footprints: Footprints | None) -> None:
        self.inventory = inventory
        self.footprints = footprints
        self._estimates: dict[str, float | None] = {}  # model id -> GB, estimated once per configuration

    def forget(self, model_id: str) -> None:
        """Its configuration changed: estimate it again when needed."""
        self._estimates.pop(model_id, None)

    async def need(self, service: "Service", config: Config, pools: Sequence[Pool]) -> float:
        """GB to reserve for service (all its GPUs together); sets service.need_source."""
        if service.config.memory_gb is not None:
            service.need_source = "config"
            return service.config.memory_gb
        footprint = self.footprints.get(service.model_id, service.fingerprint) if self.footprints else None
        if footprint is not None and footprint.on_gpu == bool(service.gpus):
            service.need_source = "measured"
            return footprint.memory_gb
        if service.model_id not in self._estimates:  # one estimate for all its local replicas
            # Reads weight-file headers: off the event loop.
            self._estimates[service.model_id] = await asyncio.to_thread(self._estimate, service, config)
        estimate = self._estimates[service.model_id]
        if estimate is not None:
            service.need_source = "estimate"
            return estimate
        gpu_budgets = [p.budget_gb for p in pools if p.gpu_index is not None and p.budget_gb is not None]
        if service.gpus and gpu_budgets:
            service.need_source = "whole GPU (size unknown)"
            return min(gpu_budgets) * service.gpus
        service.need_source = "unknown"
        return 0.0

    def _estimate(self, service: "Service", config: Config) -> float | None:
        model = service.config
        try:
            path = placeholder_values(service.model_id, model, 0, config)["MODEL_PATH"]
            if not path or "://" in path:
                return None
            args = model.args
            context = args.get("max_model_len") or args.get("max_seq_len") or args.get("context_length")
            estimate = estimate_memory(
                path,
                dtype=str(args["dtype"]) if "dtype" in args else None,
                context_tokens=int(context) if isinstance(context, (int, float)) and context else None,
                sequences=int(args.get("max_num_seqs", 1) or 1),
                quantization=str(args["quantization"]) if "quantization" in args else None,
            )
        except (ValueError, OSError) as exc:  # an argument or a file it cannot read: no estimate
            log_event(log, "no memory estimate", logging.WARNING, model=service.id, reason=str(exc))
            return None
        if estimate is None:
            return None
        log_event(log, "memory estimated", model=service.id, gb=round(estimate.total_gb, 2), detail=estimate.detail)
        return round(estimate.total_gb, 2)

    async def follow(self, service: "Service", process: ServiceProcess, still_running: Callable[[], bool]) -> None:
        """Measure a running service every MEASURE_INTERVAL s; keep the peak
        in service.measured_gb and, when it beats the stored one, in sqlite."""
        stored = self.footprints.get(service.model_id, service.fingerprint) if self.footprints else None
        best = stored.memory_gb if stored is not None and stored.on_gpu == bool(service.gpus) else 0.0
        first = True
        while still_running():
            try:
                used = await asyncio.to_thread(self._used_gb, service, process)
                if used is not None and (service.measured_gb is None or used > service.measured_gb * 1.01):
                    service.measured_gb = used
                    if first:
                        log_event(log, "memory measured", model=service.id, gb=round(used, 3),
                                  reserved_gb=round(service.reserved_gb, 3))
                    if self.footprints is not None and used > best:
                        best = used
                        footprint = Footprint(round(used, 3), bool(service.gpus), service.load_seconds)
                        await asyncio.to_thread(self.footprints.record, service.model_id, service.fingerprint,
                                                footprint)
            except Exception:  # noqa: BLE001 - a failed measurement must not stop the service
                log.exception("measuring %s failed", service.id)
                return
            first = False
            await asyncio.sleep(MEASURE_INTERVAL)

    def _used_gb(self, service: "Service", process: ServiceProcess) -> float | None:
        if not service.gpus:
            used = process.memory_bytes()
            return used / GIB if used else None
        if self.inventory.source != "nvml":
            return None  # simulated GPUs: nothing to measure
        pids = set(process.pids())
        inventory = from_nvml()
        used = sum(b for gpu in inventory.gpus for pid, b in gpu.processes.items() if pid in pids)
        return used / GIB if used else None
