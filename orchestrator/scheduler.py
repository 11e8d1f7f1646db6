"""Decides which services run: single-flight loads, a memory budget with
least-recently-used eviction of idle services, backoff for failing loads,
idle unloading, and per-model concurrency limits.

Policy (the reader's summary; docs/ARCHITECTURE.md has the longer one):
- A request first registers on its model (`in_flight`), then waits for it to
  be ready. A service with anything in flight is never evicted, so a model
  loaded for waiting requests cannot be evicted before they use it.
- Loads take the placement lock only to decide and to evict; the slow part
  (process start, health wait) runs outside it, with the memory reserved.
- A model that cannot fit even after evicting every unpinned service fails at
  once (507). One that could fit once busy services drain waits up to
  settings.eviction_wait, then 503 with Retry-After.
- A failed load is not retried for each request: the next attempt waits
  1, 2, 4 ... 60 s, and requests in between get 503 with Retry-After. A crash
  restarts on the next request; repeated crashes back off the same way (the
  count resets once a service has stayed up for STABLE_UPTIME).
- Every way out of STARTING or READY (failed or cancelled load, eviction,
  unload, idle unload, crash) goes through _retire(), which kills the whole
  process group and always finishes, even when its caller is cancelled.

The scheduler knows nothing of HTTP requests; it hands out leases with a URL.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.config import Config, ModelConfig
from core.errors import ServiceError
from core.logs import log_event
from core.process import LaunchSpec, ServiceProcess, StartupError, free_port

log = logging.getLogger("modelyard.scheduler")

MAX_BACKOFF = 60.0
# A service that ran this long before crashing starts its crash count afresh.
STABLE_UPTIME = 60.0
Launcher = Callable[[str, ModelConfig, int], LaunchSpec]


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass
class Service:
    id: str
    config: ModelConfig
    state: State = State.STOPPED
    process: ServiceProcess | None = None
    port: int | None = None
    in_flight: int = 0  # requests holding or waiting for this service
    queued: int = 0  # of those, waiting for a concurrency slot
    last_used: float = 0.0
    started_at: float | None = None
    load_seconds: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    starts: int = 0
    load_task: asyncio.Task[None] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None

    def __post_init__(self) -> None:
        self.stopped.set()
        if self.config.max_concurrency:
            self.slots = asyncio.Semaphore(self.config.max_concurrency)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def holds_memory(self) -> bool:
        return self.state in (State.STARTING, State.READY, State.STOPPING)

    def evictable(self) -> bool:
        return self.state is State.READY and self.in_flight == 0 and not self.config.pinned


class Lease:
    """A request's hold on a ready service; release() exactly once."""

    __slots__ = ("service", "url", "waited", "responded", "_scheduler", "_released", "_slot")

    def __init__(self, scheduler: "Scheduler", service: Service, waited: float, slot: bool) -> None:
        self._scheduler = scheduler
        self.service = service
        self.url = service.url
        self.waited = waited
        self.responded = False  # the proxy set it once the answer's headers went out
        self._slot = slot
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._scheduler._release(self.service, self._slot)


class Scheduler:
    def __init__(self, config: Config, launcher: Launcher) -> None:
        self.config = config
        self.settings = config.settings
        self.launcher = launcher
        self.services = {model_id: Service(model_id, model) for model_id, model in config.models.items()}
        self._placement = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._idle_unloader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # background tasks, kept referenced
        self._waiting = 0  # coroutines waiting on _changed; no notify work without them
        self.closing = False

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._idle_unloader = asyncio.create_task(self._unload_idle_forever())

    async def shutdown(self) -> None:
        self.closing = True
        if self._idle_unloader:
            self._idle_unloader.cancel()
        await asyncio.gather(*(self.unload(s.id) for s in self.services.values()), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._session:
            await self._session.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- requests -----------------------------------------------------------

    async def acquire(self, model_id: str) -> Lease:
        """Wait until model_id's service is ready and a slot is free."""
        service = self.services[model_id]
        began = time.monotonic()
        service.in_flight += 1
        slot = False
        try:
            while True:
                await self._ensure_ready(service)
                if service.slots is None:
                    break
                if service.slots.locked() and service.queued >= service.config.max_queue:
                    raise ServiceError(
                        429,
                        f"model '{model_id}' is at its concurrency limit "
                        f"({service.config.max_concurrency}) with {service.queued} requests queued",
                        code="queue_full",
                        retry_after=1,
                    )
                service.queued += 1
                try:
                    await service.slots.acquire()
                finally:
                    service.queued -= 1
                if service.state is State.READY:
                    slot = True
                    break
                service.slots.release()  # it stopped or crashed while we queued: start over
        except BaseException:
            service.in_flight -= 1
            self._notify()
            raise
        service.last_used = time.monotonic()
        return Lease(self, service, time.monotonic() - began, slot)

    def _release(self, service: Service, slot: bool) -> None:
        if slot and service.slots is not None:
            service.slots.release()
        service.in_flight -= 1
        service.last_used = time.monotonic()
        if service.in_flight == 0:
            self._notify()

    async def _ensure_ready(self, service: Service) -> None:
        while True:
            if self.closing:
                raise ServiceError(503, "the orchestrator is shutting down", code="shutting_down", retry_after=5)
            if service.state is State.READY:
                return
            if service.state is State.STOPPING:
                await service.stopped.wait()
                continue
            if service.load_task is None or service.load_task.done():
                if service.state is State.FAILED and time.monotonic() < service.retry_at:
                    raise self._unavailable(service)
                service.load_task = asyncio.create_task(self._load(service))
            task = service.load_task
            try:
                # shield: one waiter giving up must not cancel the load for the others
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled() and not _being_cancelled():
                    # The load itself was cancelled (unload, shutdown), not this request.
                    raise ServiceError(
                        503, f"model '{service.id}' was unloaded while it was starting", code="model_unloaded",
                        retry_after=1,
                    ) from None
                raise

    def _unavailable(self, service: Service) -> ServiceError:
        wait = max(0.0, service.retry_at - time.monotonic())
        reason = service.last_error or "it is not running"
        return ServiceError(
            503,
            f"model '{service.id}' is unavailable: {reason}" + (f" (next try in {wait:.0f} s)" if wait else ""),
            code="model_unavailable",
            retry_after=wait or 1,
        )

    # --- loading and placement ---------------------------------------------

    async def load(self, model_id: str) -> Service:
        """Start model_id if needed (the admin API's load); waits for ready.
        Unlike acquire(), it takes no concurrency slot."""
        service = self.services[model_id]
        service.in_flight += 1  # interest: nothing evicts it while we wait
        try:
            await self._ensure_ready(service)
        finally:
            service.in_flight -= 1
            service.last_used = time.monotonic()
            self._notify()
        return service

    async def _load(self, service: Service) -> None:
        await self._reserve(service)
        began = time.monotonic()
        process: ServiceProcess | None = None
        try:
            service.port = free_port()
            spec = self.launcher(service.id, service.config, service.port)
            process = ServiceProcess(service.id, spec)
            service.process = process
            process.start()
            service.starts += 1
            log_event(log, "service starting", model=service.id, pid=process.pid, port=service.port)
            assert self._session is not None
            await process.wait_healthy(
                service.url + service.config.health_path, service.config.startup_timeout, self._session
            )
        except asyncio.CancelledError:
            # Unloaded or shutting down on purpose: not a failure to back off from.
            await self._retire(service, process, State.STOPPED)
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the client gets a 503 that says what
            error = exc if isinstance(exc, ServiceError) else None
            reason = error.message if error else (str(exc) or type(exc).__name__)
            if not isinstance(exc, (StartupError, ServiceError)):
                log.exception("starting %s failed unexpectedly", service.id)
            service.failures += 1
            retry_at = time.monotonic() + _backoff(service.failures)
            await self._retire(service, process, State.FAILED, reason=reason, retry_at=retry_at)
            raise ServiceError(
                error.status if error else 503,
                f"model '{service.id}' failed to start: {reason}",
                code=error.code if error and error.code else "model_load_failed",
                retry_after=max(1.0, retry_at - time.monotonic()),
            ) from None
        service.state = State.READY
        service.started_at = time.monotonic()
        service.load_seconds = service.started_at - began
        service.last_used = service.started_at
        log_event(log, "service ready", model=service.id, pid=process.pid, load_seconds=round(service.load_seconds, 3))
        self._spawn(self._watch_exit(service, process))
        self._notify()

    async def _reserve(self, service: Service) -> None:
        """Make room for service (evicting idle ones) and mark it STARTING,
        which reserves its memory. Waits up to eviction_wait for busy ones,
        without holding the placement lock while it waits."""
        deadline = time.monotonic() + self.settings.eviction_wait
        while True:
            async with self._placement:
                victims = self._victims_for(service)
                if victims is not None:
                    for victim in victims:
                        if victim.evictable():  # nothing can change it under the lock, but be sure
                            log_event(log, "evicting", model=victim.id, for_model=service.id, reason="memory budget")
                            await self._stop(victim)
                    if self._victims_for(service) == []:
                        service.state = State.STARTING
                        service.stopped.clear()
                        service.last_error = None
                        return
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                busy = [s.id for s in self.services.values() if s.holds_memory and s is not service]
                raise ServiceError(
                    503,
                    f"model '{service.id}' needs {service.config.memory_gb:g} GB; the models holding memory "
                    f"({', '.join(busy)}) stayed busy for {self.settings.eviction_wait:g} s",
                    code="memory_busy",
                    retry_after=5,
                )
            await self._wait_for_change(remaining)

    def _victims_for(self, service: Service) -> list[Service] | None:
        """The idle services to evict so that service fits: [] when it fits
        now, None when it must wait for busy ones. Raises 507 when it cannot
        fit even with every unpinned service gone."""
        budget = self.settings.memory_budget_gb
        need = service.config.memory_gb
        if budget is None or need == 0:
            return []
        others = [s for s in self.services.values() if s is not service and s.holds_memory]
        pinned = sum(s.config.memory_gb for s in others if s.config.pinned)
        if need + pinned > budget:
            raise ServiceError(
                507,
                f"model '{service.id}' needs {need:g} GB but the memory budget is {budget:g} GB"
                + (f" and pinned models hold {pinned:g} GB" if pinned else "")
                + "; it cannot fit even after evicting every other model",
                code="insufficient_memory",
            )
        free = budget - sum(s.config.memory_gb for s in others)
        victims: list[Service] = []
        for idle in sorted((s for s in others if s.evictable()), key=lambda s: s.last_used):
            if free >= need:
                break
            victims.append(idle)
            free += idle.config.memory_gb
        # Evict nothing unless the idle ones alone make enough room.
        return victims if free >= need else None

    # --- stopping -------------------------------------------------------------

    async def unload(self, model_id: str, drain: float = 0.0) -> None:
        """Stop model_id. With drain, first wait up to that many seconds for its
        in-flight requests to finish; whatever is still running then fails."""
        service = self.services[model_id]
        deadline = time.monotonic() + drain
        while service.in_flight and service.state is State.READY and time.monotonic() < deadline:
            await self._wait_for_change(deadline - time.monotonic())
        task = service.load_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await asyncio.shield(task)
            except (asyncio.CancelledError, ServiceError):
                if _being_cancelled():
                    raise
        if service.state is State.READY:
            await self._stop(service)
        elif service.state is State.STOPPING:
            await service.stopped.wait()
        if service.state is State.FAILED:
            service.state = State.STOPPED  # an explicit unload also clears the backoff
        service.failures = 0
        service.retry_at = 0.0

    async def _stop(self, service: Service) -> None:
        """Stop a READY service on purpose (eviction, unload, idle)."""
        service.failures = 0
        await self._retire(service, service.process, State.STOPPED)

    async def _retire(
        self,
        service: Service,
        process: ServiceProcess | None,
        final: State,
        reason: str | None = None,
        retry_at: float = 0.0,
    ) -> None:
        """Take service out of STARTING/READY: stop its whole process group,
        then set `final`. Memory stays reserved until the group is gone. Runs
        to the end even if the caller is cancelled (it is shielded)."""
        # Before any await, so no request sees READY for a dying service.
        service.state = State.STOPPING
        service.stopped.clear()

        async def finish() -> None:
            try:
                if process is not None:
                    code = await process.stop(self.settings.shutdown_grace)
                    log_event(log, "service stopped", model=service.id, pid=process.pid, exit_code=code,
                              reason=reason or "stopped on purpose")
            finally:
                if service.process is process:
                    service.process = None
                service.port = None
                service.started_at = None
                service.last_error = reason
                service.retry_at = retry_at
                service.state = final
                service.stopped.set()
                self._notify()

        await asyncio.shield(self._spawn(finish()))

    async def _watch_exit(self, service: Service, process: ServiceProcess) -> None:
        code = await process.wait_exit()
        if service.process is not process or service.state is not State.READY:
            return  # stopped on purpose
        uptime = time.monotonic() - (service.started_at or time.monotonic())
        if uptime >= STABLE_UPTIME:
            service.failures = 0
        service.failures += 1
        # The first crash restarts on the next request; repeated ones back off.
        delay = 0.0 if service.failures <= 1 else _backoff(service.failures - 1)
        tail = process.last_lines()
        reason = f"the service exited unexpectedly with code {code}" + (f"; last log lines:\n{tail}" if tail else "")
        log_event(log, "service crashed", logging.ERROR, model=service.id, exit_code=code, failures=service.failures)
        # Its children may live on holding memory and the port: stop the group.
        await self._retire(service, process, State.FAILED, reason=reason, retry_at=time.monotonic() + delay)

    async def _unload_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for service in self.services.values():
                ttl = service.config.ttl
                if not (ttl and service.evictable() and now - service.last_used >= ttl):
                    continue
                log_event(log, "unloading idle service", model=service.id, idle_seconds=round(now - service.last_used))
                try:
                    await self._stop(service)
                except Exception:  # noqa: BLE001 - one failure must not end idle unloading for all
                    log.exception("idle unload of %s failed", service.id)

    async def _wait_for_change(self, timeout: float) -> None:
        """Wait until a service changes state or goes idle, at most timeout s."""
        self._waiting += 1
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        if not self._waiting:
            return

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify())


def _backoff(failures: int) -> float:
    """Seconds before the next start after `failures` failures: 1, 2, 4 ... 60."""
    return min(2.0 ** (max(failures, 1) - 1), MAX_BACKOFF)


def _being_cancelled() -> bool:
    """Whether the running task itself has been asked to stop."""
    task = asyncio.current_task()
    return bool(task and task.cancelling())
