"""Admin API: what runs, and load / unload / log tail by hand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.engines import service_log_path
from core.errors import ServiceError
from core.gpu import discover
from orchestrator.adapters import Adapters
from orchestrator.scheduler import Scheduler, Service, State


class AdapterRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The model name clients will use for the adapter.")
    base: str = Field(description="Id of the model it adapts (one with `lora` in models.yaml).")
    path: str = Field(description="Absolute path of the PEFT LoRA adapter directory on this host.")


class MaintenanceSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
    message: str = Field("", max_length=500, description="Said to clients in the 503.")


def describe(service: Service) -> dict[str, Any]:
    now = time.monotonic()
    process = service.process
    return {
        "id": service.id,
        "model": service.model_id,  # the same but for a model's further local replicas (chat~2 serves chat)
        "engine": service.config.engine,
        "type": service.config.type,
        "state": service.state.value,
        "pid": process.pid if process else None,
        "port": service.port,
        "memory_gb": service.config.memory_gb,
        "gpus": service.gpus,
        "pools": list(service.placement.pools) if service.placement else [],
        "reserved_gb": round(service.reserved_gb, 3),
        "need_source": service.need_source,
        "measured_gb": round(service.measured_gb, 3) if service.measured_gb is not None else None,
        "cuda_visible_devices": ",".join(map(str, service.assignment.indices)) if service.assignment else None,
        "gpu_memory_fraction": service.assignment.memory_fraction if service.assignment else None,
        "rss_bytes": process.memory_bytes() if process else 0,
        "uptime_s": round(now - service.started_at, 1) if service.started_at else None,
        "idle_s": round(now - service.last_used, 1) if service.last_used else None,
        "in_flight": service.in_flight,
        "queued": service.queued,
        "load_seconds": round(service.load_seconds, 3) if service.load_seconds else None,
        "starts": service.starts,
        "sleeps": service.sleeps,
        "wakes": service.wakes,
        "failures": service.failures,
        "last_error": service.last_error,
        "pinned": service.config.pinned,
        "ttl": service.config.ttl,
        # The last request's keep_alive for this run (-1: forever), else null.
        "keep_alive_s": None if service.keep_alive is None else (-1 if service.keep_alive == float("inf") else service.keep_alive),
    }


def pool_usage(scheduler: Scheduler) -> list[dict[str, Any]]:
    """Each memory pool (host, gpu0 ...) with its budget and reservations."""
    rows = []
    for pool in scheduler.pools:
        held: dict[str, float] = {}
        for s in scheduler.memory_holders():
            if s.placement is not None and pool.name in s.placement.reservation:
                held[s.id] = held.get(s.id, 0.0) + round(s.placement.reservation[pool.name], 3)
        rows.append(
            {
                "name": pool.name,
                "label": pool.label,
                "gpu_index": pool.gpu_index,
                "total_gb": round(pool.total_gb, 2) if pool.total_gb else None,
                "budget_gb": pool.budget_gb,
                "reserved_gb": round(sum(held.values()), 3),
                "services": held,
            }
        )
    return rows


async def gpu_report(app: Any) -> dict[str, Any]:
    """Each GPU now, with what the scheduler reserved on it and what NVML
    measures for each of our services."""
    config, scheduler = app.state.config, app.state.scheduler
    declared = [g.model_dump() for g in config.settings.gpus] if config.settings.gpus else None
    inventory = await asyncio.to_thread(discover, declared)
    # Every process of each service: vLLM holds GPU memory in its engine core and workers, not its first pid.
    ours = {pid: s.id for s in scheduler.services.values() if s.process for pid in s.process.pids()}
    body = inventory.as_dict()
    pools = {p["name"]: p for p in pool_usage(scheduler)}
    for gpu, row in zip(inventory.gpus, body["gpus"], strict=True):
        measured: dict[str, int] = {}
        for pid, used in gpu.processes.items():
            if pid in ours:
                measured[ours[pid]] = measured.get(ours[pid], 0) + used
        row["measured"] = measured
        pool = pools.get(f"gpu{gpu.index}", {})
        row["budget_gb"] = pool.get("budget_gb")
        row["reserved_gb"] = pool.get("reserved_gb")
        row["reserved"] = pool.get("services", {})
    return body


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
            "pools": pool_usage(scheduler),
        }

    @router.get("/gpus")
    async def list_gpus(request: Request) -> dict[str, Any]:
        """The GPU inventory now (NVML, or the simulated one), with the memory
        each of our services holds on each card where NVML reports it."""
        return await gpu_report(request.app)

    @router.get("/replicas")
    async def replicas(request: Request) -> dict[str, Any]:
        """Models with replicas (models.yaml `replicas:`): each replica's health, breaker, load and latency."""
        return {"object": "list", "data": [r.describe() for r in request.app.state.router.models.values()]}

    @router.get("/requests")
    async def recent_requests(
        request: Request, limit: int = Query(50, ge=1, le=500), model: str | None = Query(None, max_length=300)
    ) -> dict[str, Any]:
        """The last requests to the model routes, newest first (kept in memory: a restart forgets them)."""
        return {"object": "list", "data": request.app.state.recent.latest(limit, model)}

    @router.post("/reload")
    async def reload(request: Request, drain: float = Query(30.0, ge=0, le=3600)) -> dict[str, Any]:
        """Re-read models.yaml: added models can be used at once; removed and
        changed ones are drained (at most `drain` seconds) and stopped, and a
        changed one starts anew on its next request."""
        return await request.app.state.reload(drain)  # type: ignore[no-any-return]

    @router.get("/maintenance")
    async def get_maintenance(request: Request) -> dict[str, Any]:
        return vars(request.app.state.maintenance)

    @router.post("/maintenance")
    async def set_maintenance(request: Request, body: MaintenanceSwitch) -> dict[str, Any]:
        """On: the model routes answer 503 `maintenance` and /ready 503, so a load
        balancer drains this host; admin, /v1/models and /health go on working.
        Requests already running finish. Not kept across a restart."""
        state = request.app.state.maintenance
        if body.enabled and not state.enabled:
            state.since = time.time()
        state.enabled, state.message = body.enabled, body.message if body.enabled else ""
        if not body.enabled:
            state.since = None
        return vars(state)

    @router.get("/adapters")
    async def list_adapters(request: Request) -> dict[str, Any]:
        """LoRA adapters (models.yaml's and registered ones), and whether each is
        loaded in its base model's running service."""
        adapters: Adapters = request.app.state.adapters
        services = scheduler_of(request).services
        usable = [
            {**a.describe(), "usable": True, "loaded": a.name in adapters.loaded_in(services[a.base])}
            for a in adapters.all()
        ]
        unusable = [
            {**a.describe(), "usable": False, "reason": reason, "loaded": False} for a, reason in adapters.unusable()
        ]
        return {"adapters": usable + unusable}

    @router.post("/adapters", status_code=201)
    async def register_adapter(request: Request, body: AdapterRegistration) -> dict[str, Any]:
        """Register a LoRA adapter of a model that has `lora`: clients can use its
        name at once. When the base model runs, the adapter is loaded into it
        now, so that one vLLM cannot load is refused here (400)."""
        adapters: Adapters = request.app.state.adapters
        adapter = adapters.register(body.name, body.base, body.path)
        service = scheduler_of(request).services[adapter.base]
        problem = None
        if service.state is State.READY:
            try:
                await adapters.ensure_loaded(service, adapter)
            except ServiceError as exc:
                if exc.code == "adapter_rejected":  # vLLM refused it: not registered after all
                    adapters.unregister(adapter.name)
                    raise ServiceError(400, exc.message, code="invalid_adapter", param="path") from None
                problem = exc.message  # vLLM failing or stopping: it loads on first use instead
        answer = {**adapter.describe(), "loaded": adapter.name in adapters.loaded_in(service)}
        return {**answer, "load_error": problem} if problem else answer

    @router.delete("/adapters/{name:path}")
    async def remove_adapter(request: Request, name: str) -> dict[str, Any]:
        """Unregister an adapter registered at runtime, and unload it from its
        base model's service (requests for it then get 404)."""
        adapters: Adapters = request.app.state.adapters
        adapter = adapters.unregister(name)
        service = scheduler_of(request).services.get(adapter.base)
        if service is not None and service.state is State.READY:
            try:
                await adapters.unload(service, adapter)
            except ServiceError:
                pass  # gone with its process, or dropped when it next restarts
        return {**adapter.describe(), "removed": True}

    @router.get("/services/{model_id:path}/logs")
    async def service_logs(request: Request, model_id: str, lines: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        service = service_of(request, model_id)
        path = service_log_path(request.app.state.config, service.id)
        # A log may be megabytes: read it off the event loop.
        return {"id": service.id, "lines": await asyncio.to_thread(tail_lines, path, lines)}

    @router.post("/services/{model_id:path}/load")
    async def load_service(request: Request, model_id: str) -> dict[str, Any]:
        service = service_of(request, model_id)
        return describe(await scheduler_of(request).load(service.id))

    @router.post("/services/{model_id:path}/sleep")
    async def sleep_service(request: Request, model_id: str) -> dict[str, Any]:
        """Put an idle model to sleep (models.yaml `sleep`): its GPUs are freed,
        its weights wait in host memory, and its next request wakes it."""
        service = service_of(request, model_id)
        return describe(await scheduler_of(request).sleep(service.id))

    @router.post("/services/{model_id:path}/unload")
    async def unload_service(
        request: Request, model_id: str, drain: float = Query(30.0, ge=0, le=3600)
    ) -> dict[str, Any]:
        """Stop a service after its in-flight requests finish (at most `drain` seconds)."""
        service = service_of(request, model_id)
        await scheduler_of(request).unload(service.id, drain=drain)
        return describe(scheduler_of(request).services.get(service.id, service))  # a reload may have replaced it

    @router.get("/services/{model_id:path}")
    async def get_service(request: Request, model_id: str) -> dict[str, Any]:
        return describe(service_of(request, model_id))

    return router


TAIL_BLOCK = 64 * 1024


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log, read backwards from its end in blocks: a 10 MB log
    polled every second (the dashboard, logs -f) costs what its last lines take, not 10 MB."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, 2)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(TAIL_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    found = text.split("\n")
    if found and found[-1] == "":
        found.pop()  # the newline that ends the last line
    if position > 0:
        found = found[1:]  # the first one may be cut: a whole line precedes it
    return [line.removesuffix("\r") for line in found[-lines:]]
