"""Admin API: what runs, and load / unload / log tail by hand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from collections import deque
from typing import Any

from fastapi import APIRouter, Query, Request

from core.engines import service_log_path
from core.errors import ServiceError
from core.gpu import discover
from orchestrator.scheduler import Scheduler, Service


def describe(service: Service) -> dict[str, Any]:
    now = time.monotonic()
    process = service.process
    return {
        "id": service.id,
        "engine": service.config.engine,
        "type": service.config.type,
        "state": service.state.value,
        "pid": process.pid if process else None,
        "port": service.port,
        "memory_gb": service.config.memory_gb,
        "rss_bytes": process.memory_bytes() if process else 0,
        "uptime_s": round(now - service.started_at, 1) if service.started_at else None,
        "idle_s": round(now - service.last_used, 1) if service.last_used else None,
        "in_flight": service.in_flight,
        "queued": service.queued,
        "load_seconds": round(service.load_seconds, 3) if service.load_seconds else None,
        "starts": service.starts,
        "failures": service.failures,
        "last_error": service.last_error,
        "pinned": service.config.pinned,
        "ttl": service.config.ttl,
    }


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def scheduler_of(request: Request) -> Scheduler:
        return request.app.state.scheduler  # type: ignore[no-any-return]

    def service_of(request: Request, model_id: str) -> Service:
        service = scheduler_of(request).services.get(model_id)
        if service is None:
            raise ServiceError(404, f"no model '{model_id}' is configured", code="model_not_found")
        return service

    @router.get("/services")
    async def list_services(request: Request) -> dict[str, Any]:
        scheduler = scheduler_of(request)
        return {
            "services": [describe(s) for s in scheduler.services.values()],
            "memory_budget_gb": scheduler.settings.memory_budget_gb,
        }

    @router.get("/gpus")
    async def list_gpus(request: Request) -> dict[str, Any]:
        """The GPU inventory now (NVML, or the simulated one), with the memory
        each of our services holds on each card where NVML reports it."""
        config = request.app.state.config
        declared = [g.model_dump() for g in config.settings.gpus] if config.settings.gpus else None
        inventory = await asyncio.to_thread(discover, declared)
        ours = {
            s.process.pid: s.id for s in scheduler_of(request).services.values() if s.process and s.process.pid
        }
        body = inventory.as_dict()
        for gpu, row in zip(inventory.gpus, body["gpus"]):
            row["services"] = {ours[pid]: used for pid, used in gpu.processes.items() if pid in ours}
        return body

    @router.get("/services/{model_id:path}/logs")
    async def service_logs(request: Request, model_id: str, lines: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        service = service_of(request, model_id)
        path = service_log_path(request.app.state.config, service.id)
        # A log may be megabytes: read it off the event loop.
        return {"id": service.id, "lines": await asyncio.to_thread(_tail, path, lines)}

    @router.post("/services/{model_id:path}/load")
    async def load_service(request: Request, model_id: str) -> dict[str, Any]:
        service = service_of(request, model_id)
        await scheduler_of(request).load(service.id)
        return describe(service)

    @router.post("/services/{model_id:path}/unload")
    async def unload_service(
        request: Request, model_id: str, drain: float = Query(30.0, ge=0, le=3600)
    ) -> dict[str, Any]:
        """Stop a service after its in-flight requests finish (at most `drain` seconds)."""
        service = service_of(request, model_id)
        await scheduler_of(request).unload(service.id, drain=drain)
        return describe(service)

    @router.get("/services/{model_id:path}")
    async def get_service(request: Request, model_id: str) -> dict[str, Any]:
        return describe(service_of(request, model_id))

    return router


def _tail(path: Path, lines: int) -> list[str]:
    tail: deque[str] = deque(maxlen=lines)
    if path.exists():
        with path.open(encoding="utf-8", errors="replace") as handle:
            tail.extend(line.rstrip("\n") for line in handle)
    return list(tail)
