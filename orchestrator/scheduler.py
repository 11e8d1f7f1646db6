"""Decides which services run: single-flight loads, placement on the host's
memory pools (RAM and each GPU, see placement.py) with eviction of the idle
services cheapest to lose, a bounded wait for busy ones, backoff for failing
loads, idle unloading, per-model concurrency limits, and reloads of
models.yaml.

Policy (the reader's summary; docs/ARCHITECTURE.md has the longer one):
- A request first registers on its model (`in_flight`), then waits for it to
  be ready. A service with anything in flight is never evicted, so a model
  loaded for waiting requests cannot be evicted before they use it.
- Loads take the placement lock only to decide; victims stop and the new
  process starts outside it, their memory counted until they are gone.
- A model that cannot fit even after evicting every unpinned service fails at
  once (507). One that could fit once busy services drain waits; after
  settings.fair_wait those services stop taking new requests (they wait at
  their gate) so that they drain; after settings.eviction_wait, 503.
- A failed load is not retried for each request: the next attempt waits
  1, 2, 4 ... 60 s, and requests in between get 503 with Retry-After. A crash
  restarts on the next request; repeated crashes back off the same way (the
  count resets once a service has stayed up for STABLE_UPTIME).
- Every way out of STARTING or READY goes through _begin_stop(), which kills
  the whole process group and always finishes, even when its caller is
  cancelled.

The scheduler knows nothing of HTTP requests; it hands out leases with a URL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import psutil

from core.config import Config, ModelConfig
from core.engines import GpuAssignment
from core.errors import ServiceError
from core.gpu import GIB, Inventory
from core.logs import log_event
from core.process import LaunchSpec, ServiceProcess, StartupError, free_port
from core.replica_config import local_service_ids, model_id_of
from orchestrator.footprints import Footprints, fingerprint
from orchestrator.metrics import SchedulerMetrics
from orchestrator.placement import HOST, Holder, Need, Placement, Pool, Unplaceable, place
from orchestrator.service import Lease, Service, State
from orchestrator.sizing import Sizing

log = logging.getLogger("modelyard.scheduler")

MAX_BACKOFF = 60.0
# A service that ran this long before crashing starts its crash count afresh.
STABLE_UPTIME = 60.0
# Eviction cost, in expected seconds lost: the victim's reload time plus the
# fixed cost of any swap, times its heat (its requests, each decaying by half
# every HEAT_HALF_LIFE s: a model used often and lately is dear). Priority
# outranks all of it.
SWAP_SECONDS = 5.0
HEAT_HALF_LIFE = 60.0
PRIORITY_WEIGHT = 1e6
# Host memory services on the CPU may use when settings.memory_budget_gb is unset.
DEFAULT_HOST_SHARE = 0.9
# (model id, its config, port, GPUs, service id): the service id differs from the model's for replicas (chat~2).
Launcher = Callable[[str, ModelConfig, int, "GpuAssignment | None", str], LaunchSpec]
Observer = Callable[[Service, State, State], None]
# Fields whose change makes a reload restart a running service; others apply in place.
RESTART_FIELDS = ("engine", "model", "cmd", "args", "env", "gpus", "health_path", "type", "sleep")


class _Retired(Exception):
    """The service was replaced by a reload: go through the gate again."""


class Scheduler:
    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        inventory: Inventory | None = None,
        footprints: Footprints | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.launcher = launcher
        self.inventory = inventory or Inventory("none", [], "no inventory given")
        self.pools = memory_pools(config, self.inventory)
        self.sizing = Sizing(self.inventory, footprints)
        self.metrics = metrics
        self.observers: list[Observer] = [metrics.transition] if metrics else []  # on every state change
        self.services = {service_id: self._new_service(service_id, config.models[model_id])
                         for service_id, model_id in services_of(config).items()}
        self._retired: set[Service] = set()  # replaced by a reload, still holding memory
        self._placement = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._idle_unloader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # background tasks, kept referenced
        self._stops: set[asyncio.Task[None]] = set()  # process-group stops: never cancelled
        self._waiting = 0  # coroutines waiting on _changed; no notify work without them
        self.closing = False

    def _new_service(self, service_id: str, model: ModelConfig) -> Service:
        service = Service(service_id, model, model_id=model_id_of(service_id))
        wanted = model.gpus
        service.gpus = wanted if wanted is not None else int(bool(self.inventory.gpus) and model.type != "service")
        service.fingerprint = fingerprint(model, service.gpus)
        return service

    def memory_holders(self) -> Iterator[Service]:
        """Every service whose memory counts now, replaced ones included."""
        for service in [*self.services.values(), *self._retired]:
            if service.holds_memory and service.placement is not None:
                yield service

    # --- lifecycle ----------------------------------------------------------

    def replica_warnings(self) -> list[str]:
        """Models asking for more local replicas (replicas.local) than this host's GPUs can hold apart."""
        gpus = len(self.inventory.gpus)
        warnings = []
        for model_id, model in self.config.models.items():
            replicas, each = (model.replicas.local_count if model.replicas else 1), self.services[model_id].gpus
            if replicas > 1 and gpus and each and replicas * each > gpus:
                warnings.append(f"model '{model_id}' asks for {replicas} local replicas of {each} GPU"
                                f"{'s' if each > 1 else ''} each; this host has {gpus} GPUs, so "
                                f"{replicas - gpus // each} of them can never start")
        return warnings

    def _warn_of_replicas(self) -> None:
        for warning in self.replica_warnings():
            log_event(log, "too many local replicas", logging.WARNING, reason=warning)

    async def start(self) -> None:
        self._warn_of_replicas()
        self._session = aiohttp.ClientSession()
        self._idle_unloader = asyncio.create_task(self._unload_idle_forever())
        preload = sorted((s for s in self.services.values() if s.config.preload), key=lambda s: -s.config.priority)
        for service in preload:
            self._spawn(self._preload(service))

    async def _preload(self, service: Service) -> None:
        try:
            await self.load(service.id)
        except ServiceError as exc:  # its requests will see the same error (and its backoff)
            log_event(log, "preload failed", logging.ERROR, model=service.id, reason=exc.message)

    async def shutdown(self) -> None:
        self.closing = True
        if self._idle_unloader:
            self._idle_unloader.cancel()
        await asyncio.gather(
            *(self._unload(s, 0.0, "shutdown") for s in [*self.services.values(), *self._retired]),
            return_exceptions=True,
        )
        if self._stops:
            await asyncio.wait(list(self._stops))  # replaced services still stopping
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

    async def acquire(self, model_id: str, keep_alive: float | None = None) -> Lease:
        """Wait until model_id's service is ready and a slot is free.
        keep_alive (seconds, inf: forever): how long the model stays loaded
        once idle, from now on (the request's Ollama-style keep_alive)."""
        began = time.monotonic()
        while True:
            service = await self._pass_gate(model_id)
            try:
                slot = await self._take(service)
                break
            except _Retired:
                continue
        now = time.monotonic()
        if keep_alive is not None:
            high = self.settings.keep_alive_max
            service.keep_alive = max(self.settings.keep_alive_min, min(keep_alive, math.inf if high is None else high))
        self._touch(service, now)
        if self.metrics:
            self.metrics.wait_seconds.labels(model_id).observe(now - began)
        return Lease(service, now - began, slot, self._release)

    async def _take(self, service: Service) -> asyncio.Semaphore | None:
        """Register on service, wait until it is ready, then for a slot."""
        service.in_flight += 1
        try:
            while True:
                await self._ensure_ready(service)
                slots = service.slots
                if slots is None:
                    return None
                if slots.locked() and service.queued >= service.config.max_queue:
                    raise ServiceError(
                        429,
                        f"model '{service.id}' is at its concurrency limit "
                        f"({service.config.max_concurrency}) with {service.queued} requests queued",
                        code="queue_full",
                        retry_after=1,
                    )
                service.queued += 1
                try:
                    await slots.acquire()
                finally:
                    service.queued -= 1
                if service.state is State.READY:
                    return slots
                slots.release()  # it stopped or crashed while we queued: start over
        except BaseException:
            service.in_flight -= 1
            self._notify()
            raise

    async def _pass_gate(self, model_id: str) -> Service:
        """The service for model_id, once nothing holds its gate (a reload
        restarting it, a load waiting for its memory)."""
        service = self.services.get(model_id)
        while service is not None and service.gate.closed:
            await service.gate.wait()  # not yet in flight: a drain does not wait for us
            service = self.services.get(model_id)  # a reload may have replaced it
        if service is None:
            raise ServiceError(
                404, f"the model '{model_id}' was removed from the configuration", code="model_not_found",
                param="model",
            )
        return service

    def _touch(self, service: Service, now: float) -> None:
        service.last_used = now
        service.heat = self.heat(service, now) + 1.0
        service.heat_at = now

    def heat(self, service: Service, now: float) -> float:
        return service.heat * 0.5 ** (max(0.0, now - service.heat_at) / HEAT_HALF_LIFE)

    def _release(self, service: Service, slot: asyncio.Semaphore | None) -> None:
        if slot is not None:
            slot.release()
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
            if service.state is State.SLEEPING and service.transition is not None:
                await asyncio.shield(service.transition)  # then wake it
                continue
            if service.load_task is None or service.load_task.done():
                if service.retired:
                    raise _Retired  # its new version is in self.services
                if service.state is State.FAILED and time.monotonic() < service.retry_at:
                    raise self._unavailable(service)
                start = self._wake if service.state is State.ASLEEP else self._load
                service.load_task = asyncio.create_task(start(service))
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

    def running(self, service_id: str) -> bool:
        """Whether service_id is ready to answer now (the router passes over local replicas that are not)."""
        service = self.services.get(service_id)
        return service is not None and service.state is State.READY

    # --- loading and placement ---------------------------------------------

    async def load(self, model_id: str) -> Service:
        """Start model_id if needed (the admin API's load); waits for ready.
        Unlike acquire(), it takes no concurrency slot."""
        while True:
            service = await self._pass_gate(model_id)
            service.in_flight += 1  # interest: nothing evicts it while we wait
            try:
                await self._ensure_ready(service)
                break
            except _Retired:
                continue
            finally:
                service.in_flight -= 1
                self._notify()
        self._touch(service, time.monotonic())
        return service

    async def _load(self, service: Service) -> None:
        need = await self.sizing.need(service, self.config, self.pools)
        await self._reserve(service, need, State.STARTING)
        began = time.monotonic()
        process: ServiceProcess | None = None
        try:
            service.port = free_port()
            spec = self.launcher(service.model_id, service.config, service.port, service.assignment, service.id)
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
            self._count_load(service, "cancelled")
            await asyncio.shield(self._begin_stop(service, process, State.STOPPED))
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the client gets a 503 that says what
            error = exc if isinstance(exc, ServiceError) else None
            reason = error.message if error else (str(exc) or type(exc).__name__)
            if not isinstance(exc, (StartupError, ServiceError)):
                log.exception("starting %s failed unexpectedly", service.id)
            service.failures += 1
            self._count_load(service, "failed")
            retry_at = time.monotonic() + _backoff(service.failures)
            await asyncio.shield(self._begin_stop(service, process, State.FAILED, reason=reason, retry_at=retry_at))
            raise ServiceError(
                error.status if error else 503,
                f"model '{service.id}' failed to start: {reason}",
                code=error.code if error and error.code else "model_load_failed",
                retry_after=max(1.0, retry_at - time.monotonic()),
            ) from None
        service.started_at = time.monotonic()
        service.load_seconds = service.started_at - began
        service.last_used = service.started_at
        service.measured_gb = None
        self._count_load(service, "ready", service.load_seconds)
        self._set_state(service, State.READY)
        log_event(
            log, "service ready", model=service.id, pid=process.pid, load_seconds=round(service.load_seconds, 3),
            pools=",".join(service.placement.pools if service.placement else ()),
            reserved_gb=round(service.reserved_gb, 2), need_source=service.need_source,
        )
        running = lambda: service.process is process and service.state is State.READY  # noqa: E731
        self._spawn(self.sizing.follow(service, process, running))
        self._spawn(self._watch_exit(service, process))
        self._notify()

    async def _reserve(
        self,
        service: Service,
        need: float,
        into: State,
        only: tuple[str, ...] | None = None,
        keep: dict[str, float] | None = None,
    ) -> None:
        """Place service (evicting idle ones to make room) and move it to
        `into`, which reserves its memory (plus `keep`, what it holds already).
        `only`: these pools and no others. Waits up to eviction_wait for busy
        ones, without holding the placement lock while it waits; after
        fair_wait, the busy ones it needs stop taking new requests."""
        began = time.monotonic()
        drained: list[Service] = []  # whose gate this load closed
        tried_drain = False
        holder = f"load of {service.id}"
        try:
            while True:
                stopping: list[asyncio.Task[None]] = []
                async with self._placement:
                    conflicts = self._group_conflicts(service)
                    if conflicts:  # the group's rules first: these must go, whatever the memory
                        plan, victims, reason = None, [c for c in conflicts if c.evictable()], "group"
                    else:
                        plan = self.plan(service, need, only=only)
                        if plan is not None and not plan.victims:
                            if keep:
                                plan = Placement(
                                    (*plan.pools, *(n for n in keep if n not in plan.pools)),
                                    _merged(plan.reservation, keep),
                                )
                            service.placement = plan
                            if into is State.STARTING:
                                service.assignment = self._assignment(plan)
                                service.stopped.clear()
                            service.last_error = None
                            self._set_state(service, into)
                            return
                        victims, reason = ([self.services[v] for v in plan.victims] if plan else []), "memory"
                    stopping = self._evict(victims, service, reason, plan.cost if plan else None)
                if stopping:
                    # Outside the lock: other models may place meanwhile; the
                    # victims' memory counts until their processes are gone.
                    await asyncio.gather(*(asyncio.shield(t) for t in stopping))
                    continue
                waited = time.monotonic() - began
                if waited >= self.settings.eviction_wait:
                    busy = sorted({s.id for s in self.memory_holders() if s is not service})
                    raise ServiceError(
                        503,
                        f"model '{service.id}' needs {need:g} GB; the models holding that memory "
                        f"({', '.join(busy)}) stayed busy for {self.settings.eviction_wait:g} s",
                        code="memory_busy",
                        retry_after=5,
                    )
                # Capped at half the whole wait, so that draining always gets its chance.
                fair_wait = min(self.settings.fair_wait, self.settings.eviction_wait / 2)
                if not tried_drain and waited >= fair_wait:
                    drained, tried_drain = self._drain_for(service, need, holder), True
                next_step = self.settings.eviction_wait if tried_drain else fair_wait
                await self._wait_for_change(max(0.05, next_step - waited))
        finally:
            for busy in drained:
                busy.gate.open(holder)

    def _evict(self, victims: list[Service], service: Service, reason: str, cost: float | None) -> list[asyncio.Task[None]]:
        """Begin evicting idle victims for service (under the placement lock):
        to sleep while host memory allows and they can, else stopped."""
        tasks = []
        host_room = self._host_free()
        for victim in victims:
            if not victim.evictable():  # nothing can make it busy under the lock, but be sure
                continue
            sleep_gb = self._sleep_gb(victim)
            sleeps = victim.state is State.READY and victim.can_sleep and sleep_gb <= host_room
            log_event(
                log, "evicting", model=victim.id, for_model=service.id,
                pools=",".join(victim.placement.pools if victim.placement else ()),
                reason=reason, cost=round(cost, 2) if cost is not None else None, to="sleep" if sleeps else "stop",
            )
            if sleeps:
                host_room -= sleep_gb
                tasks.append(self._begin_sleep(victim, sleep_gb))
            else:
                tasks.append(self._begin_stop_on_purpose(victim, reason))
        return tasks

    def _group_conflicts(self, service: Service) -> list[Service]:
        """Services on GPUs or starting that service's group rules (llama-swap's
        swap / exclusive / persistent) say must go before it starts."""
        mine = self.config.group_of(service.model_id)
        if mine is None:
            return []
        name, group = mine
        conflicts = []
        for other in self.memory_holders():
            if other is service or other.state is State.ASLEEP:  # asleep: not running, holds no GPU
                continue
            if other.model_id == service.model_id and not _needs_restart(other.config, service.config):
                continue  # its own local replicas, even retired ones: one member (another version still counts)
            theirs = self.config.group_of(other.model_id)
            if theirs is not None and theirs[0] == name:
                clash = group.swap
            else:  # pinned models outside the group are never evicted for it
                clash = group.exclusive and not other.config.pinned and not (theirs is not None and theirs[1].persistent)
            if not clash:
                continue
            if other.config.pinned:
                raise ServiceError(
                    409, f"model '{service.id}' cannot start: group '{name}' rules say '{other.id}' must stop first, "
                    "and it is pinned", code="group_conflict",
                )
            conflicts.append(other)
        return conflicts

    def _drain_for(self, service: Service, need: float, holder: str) -> list[Service]:
        """Close the gates of the busy services whose memory service needs (or
        that its group says must go), so that they drain: no request waits
        forever behind a popular model."""
        conflicts = self._group_conflicts(service)
        if conflicts:
            victims = [c for c in conflicts if c.state is State.READY and not c.retired]
        else:
            plan = self.plan(service, need, drain=True)
            victims = [self.services[v] for v in plan.victims] if plan else []
        for victim in victims:
            victim.gate.close(holder)
        if victims:
            log_event(log, "draining for a waiting load", model=service.id, draining=[v.id for v in victims],
                      waited_s=self.settings.fair_wait)
        return victims

    def plan(
        self, service: Service, need_gb: float, drain: bool = False, only: tuple[str, ...] | None = None
    ) -> Placement | None:
        """Where service would go now, and whom it would evict (placement.place);
        None: wait for busy services. With drain, busy ready services count as
        evictable (whom to drain). Raises 507 when it can never fit, 503 when
        a local replica does not fit beside its model's other replicas."""
        now = time.monotonic()
        # A model's other local replicas are never stopped for it (nor drained): they count as pinned here.
        siblings = {s.id for s in self.memory_holders() if s is not service and s.model_id == service.model_id
                    and not s.retired}
        holders = [
            Holder(
                s.id,
                s.placement.reservation,
                evictable=((s.state in (State.READY, State.ASLEEP) and not s.config.pinned and not s.retired)
                           if drain else s.evictable() and not s.retired) and s.id not in siblings,
                pinned=s.config.pinned or s.id in siblings,
                cost=self.eviction_cost(s, now),
            )
            for s in self.memory_holders()
            if s is not service and s.placement is not None
        ]
        avoid = self._replica_gpus(service) if only is None else frozenset()
        try:
            return place(Need(service.id, need_gb, service.gpus, only, avoid), self.pools, holders)
        except Unplaceable as exc:
            if siblings:
                raise _no_room_for_replica(service, f"it does not fit beside them ({exc})") from None
            raise ServiceError(507, str(exc), code="insufficient_memory") from None

    def _replica_gpus(self, service: Service) -> frozenset[str]:
        """The GPUs the other local replicas of service's model hold (or will
        wake on): never its own, so that replicas spread over the GPUs. Raises
        503 when too few GPUs are left for it."""
        taken: set[str] = set()
        for other in self.memory_holders():
            if other is service or other.model_id != service.model_id or other.retired:
                continue
            for placement in (other.placement, other.home):
                taken.update(name for name in (placement.pools if placement else ()) if name != HOST)
        gpus = [p.name for p in self.pools if p.gpu_index is not None]
        if taken and service.gpus and len([g for g in gpus if g not in taken]) < service.gpus:
            raise _no_room_for_replica(
                service, f"it needs {service.gpus} GPU{'s' if service.gpus > 1 else ''} they do not use, and they hold "
                f"{', '.join(sorted(taken))} of this host's {len(gpus)} (replicas.local asks for more replicas than "
                "the GPUs allow)")
        return frozenset(taken)

    def eviction_cost(self, service: Service, now: float) -> float:
        """Expected seconds lost by stopping service now (see SWAP_SECONDS)."""
        reload = math.ceil(service.load_seconds or 1.0)  # sub-second jitter must not outweigh use
        return service.config.priority * PRIORITY_WEIGHT + (reload + SWAP_SECONDS) * self.heat(service, now)

    def _assignment(self, plan: Placement) -> GpuAssignment | None:
        """The GPUs (and card share) a placement gives its service; None when
        the host has no GPU inventory, so CUDA_VISIBLE_DEVICES is left alone."""
        if not self.inventory.gpus:
            return None
        pools = {p.name: p for p in self.pools}
        gpus = [pools[name] for name in plan.pools if pools[name].gpu_index is not None]
        if not gpus:
            return GpuAssignment()  # on the CPU: it must not touch a GPU
        fraction = min(plan.reservation[g.name] / g.total_gb for g in gpus if g.total_gb)
        indices = tuple(g.gpu_index for g in gpus if g.gpu_index is not None)
        # Rounded down, so what the engine takes never exceeds the reservation.
        return GpuAssignment(indices, math.floor(fraction * 1000) / 1000)

    # --- the sleep tier ---------------------------------------------------------

    def _host_free(self) -> float:
        host = next(p for p in self.pools if p.name == HOST)
        if host.budget_gb is None:
            return math.inf
        return host.budget_gb - sum(s.placement.reservation.get(HOST, 0.0) for s in self.memory_holders() if s.placement)

    def _sleep_gb(self, service: Service) -> float:
        sleep = service.config.sleep
        if sleep is not None and sleep.host_memory_gb is not None:
            return sleep.host_memory_gb
        return sum(gb for pool, gb in (service.placement.reservation.items() if service.placement else ()) if pool != HOST)

    def _begin_sleep(self, service: Service, sleep_gb: float) -> asyncio.Task[None]:
        """Put a READY, idle service to sleep: no request reaches it from now
        on; the returned task makes the call, then gives its GPUs back and
        keeps sleep_gb of host memory (or stops it if the call fails). Both
        are reserved while the call is under way."""
        assert service.placement is not None and service.config.sleep is not None
        gpu = service.placement
        service.placement = Placement((*gpu.pools, HOST), _merged(gpu.reservation, {HOST: sleep_gb}))
        self._set_state(service, State.SLEEPING)
        sleep = service.config.sleep

        async def call() -> None:
            try:
                await self._post(service, sleep.sleep_path, sleep.timeout)
            except (aiohttp.ClientError, asyncio.TimeoutError, ServiceError) as exc:
                reason = f"it failed to go to sleep: {_reason(exc)}"
                log_event(log, "sleep failed; stopping it instead", logging.WARNING, model=service.id, reason=reason)
                self._count_sleep(service, "failed")
                await asyncio.shield(self._begin_stop(service, service.process, State.STOPPED, reason=reason))
                return
            service.home = gpu
            service.placement = Placement((HOST,), {HOST: sleep_gb})
            service.sleeps += 1
            self._count_sleep(service, "asleep")
            self._set_state(service, State.ASLEEP)
            log_event(log, "service asleep", model=service.id, host_gb=round(sleep_gb, 3))
            self._notify()

        task = asyncio.get_running_loop().create_task(call())
        service.transition = task
        self._stops.add(task)  # never cancelled, like a stop
        task.add_done_callback(self._stops.discard)
        return task

    async def _wake(self, service: Service) -> None:
        """Wake an ASLEEP service on the GPUs it slept on (evicting there if
        need be); if those can never be free, stop it and load it afresh."""
        assert service.home is not None and service.config.sleep is not None and service.placement is not None
        home, asleep = service.home, dict(service.placement.reservation)
        try:
            await self._reserve(service, sum(home.reservation.values()), State.WAKING, only=home.pools, keep=asleep)
        except ServiceError as exc:
            if exc.status != 507:
                raise
            log_event(log, "cannot wake where it slept; restarting it", logging.WARNING, model=service.id,
                      reason=exc.message)
            await asyncio.shield(self._begin_stop_on_purpose(service, "memory"))
            await self._load(service)
            return
        began = time.monotonic()
        try:
            await self._post(service, service.config.sleep.wake_path, service.config.sleep.timeout)
        except asyncio.CancelledError:
            await asyncio.shield(self._begin_stop(service, service.process, State.STOPPED))
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ServiceError) as exc:
            reason = f"it failed to wake: {_reason(exc)}"
            service.failures += 1
            retry_at = time.monotonic() + _backoff(service.failures)
            await asyncio.shield(
                self._begin_stop(service, service.process, State.FAILED, reason=reason, retry_at=retry_at)
            )
            raise ServiceError(503, f"model '{service.id}' {reason}", code="model_load_failed",
                               retry_after=max(1.0, retry_at - time.monotonic())) from None
        seconds = time.monotonic() - began
        service.placement, service.home = home, None  # the host copy is gone
        service.wakes += 1
        service.last_used = time.monotonic()
        if self.metrics:
            self.metrics.wake_seconds.labels(service.id).observe(seconds)
        self._set_state(service, State.READY)
        log_event(log, "service awake", model=service.id, wake_seconds=round(seconds, 3))
        self._notify()

    async def _post(self, service: Service, path: str, timeout: float) -> None:
        assert self._session is not None
        async with self._session.post(service.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status >= 300:
                body = (await response.text())[:200]
                raise ServiceError(502, f"POST {path} answered {response.status}: {body}")

    async def sleep(self, model_id: str) -> Service:
        """Put model_id to sleep now (the admin API): it must be ready, idle
        and able to sleep, with room in host memory."""
        service = self.services[model_id]
        async with self._placement:
            if not service.can_sleep:
                raise ServiceError(409, f"model '{model_id}' cannot sleep: it has no `sleep` in models.yaml "
                                        "or runs on the CPU", code="cannot_sleep")
            if service.state is not State.READY or service.in_flight:
                raise ServiceError(409, f"model '{model_id}' is {service.state.value}"
                                        + (" and busy" if service.in_flight else "") + "; only an idle ready "
                                        "model can be put to sleep", code="not_idle")
            sleep_gb = self._sleep_gb(service)
            if sleep_gb > self._host_free():
                raise ServiceError(507, f"model '{model_id}' needs {sleep_gb:g} GB of host memory to sleep; "
                                        f"{max(0.0, self._host_free()):g} GB is free", code="insufficient_memory")
            task = self._begin_sleep(service, sleep_gb)
        await asyncio.shield(task)
        if service.state is not State.ASLEEP:  # the call failed, and it was stopped instead
            raise ServiceError(502, f"model '{model_id}' {service.last_error or 'did not go to sleep'}; "
                                    "it was stopped instead", code="sleep_failed")
        return service

    # --- stopping -------------------------------------------------------------

    async def unload(self, model_id: str, drain: float = 0.0, reason: str = "unload") -> None:
        """Stop model_id. With drain, first wait up to that many seconds for its
        in-flight requests to finish; whatever is still running then fails."""
        await self._unload(self.services[model_id], drain, reason)

    async def _unload(self, service: Service, drain: float, reason: str) -> None:
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
        if service.state is State.SLEEPING and service.transition is not None:
            await asyncio.shield(service.transition)
        if service.state in (State.READY, State.ASLEEP):
            await asyncio.shield(self._begin_stop_on_purpose(service, reason))
        elif service.state is State.STOPPING:
            await service.stopped.wait()
        if service.state is State.FAILED:
            self._set_state(service, State.STOPPED)  # an explicit unload also clears the backoff
        service.failures = 0
        service.retry_at = 0.0

    def _begin_stop_on_purpose(self, service: Service, reason: str) -> asyncio.Task[None]:
        """Stop a READY service on purpose (reason: memory, ttl, unload, reload, shutdown)."""
        service.failures = 0
        if self.metrics:
            self.metrics.stops.labels(service.id, reason).inc()
        return self._begin_stop(service, service.process, State.STOPPED)

    def _begin_stop(
        self,
        service: Service,
        process: ServiceProcess | None,
        final: State,
        reason: str | None = None,
        retry_at: float = 0.0,
    ) -> asyncio.Task[None]:
        """Take service out of STARTING/READY now (no request sees it ready
        from here on), and return the task that stops its whole process group
        and then sets `final`. Memory stays reserved until the group is gone.
        The task is never cancelled: await it through asyncio.shield."""
        self._set_state(service, State.STOPPING)
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
                service.placement = None  # the memory is free: the process group is gone
                service.assignment = None
                service.keep_alive = None  # a request's keep_alive lasts for this run only
                service.home = None
                self._retired.discard(service)
                self._set_state(service, final)
                service.stopped.set()
                self._notify()

        task = asyncio.get_running_loop().create_task(finish())
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        return task

    async def _watch_exit(self, service: Service, process: ServiceProcess) -> None:
        code = await process.wait_exit()
        if service.process is not process or service.state not in (State.READY, State.ASLEEP):
            return  # stopped on purpose (or a sleep or wake call is under way: its failure stops it)
        uptime = time.monotonic() - (service.started_at or time.monotonic())
        if uptime >= STABLE_UPTIME:
            service.failures = 0
        service.failures += 1
        # The first crash restarts on the next request; repeated ones back off.
        delay = 0.0 if service.failures <= 1 else _backoff(service.failures - 1)
        tail = process.last_lines()
        reason = f"the service exited unexpectedly with code {code}" + (f"; last log lines:\n{tail}" if tail else "")
        log_event(log, "service crashed", logging.ERROR, model=service.id, exit_code=code, failures=service.failures)
        if self.metrics:
            self.metrics.crashes.labels(service.id).inc()
        # Its children may live on holding memory and the port: stop the group.
        stop = self._begin_stop(service, process, State.FAILED, reason=reason, retry_at=time.monotonic() + delay)
        await asyncio.shield(stop)

    async def _unload_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for service in list(self.services.values()):  # a reload may change the dict meanwhile
                try:
                    limit = self.idle_limit(service)
                    if limit is None or not service.evictable() or now - service.last_used < limit:
                        continue
                    idle = round(now - service.last_used)
                    log_event(log, "unloading idle service", model=service.id, idle_seconds=idle)
                    await asyncio.shield(self._begin_stop_on_purpose(service, "ttl"))
                except Exception:  # noqa: BLE001 - one failure must not end idle unloading for all
                    log.exception("idle unload of %s failed", service.id)

    def idle_limit(self, service: Service) -> float | None:
        """Seconds idle after which service is stopped; None: never. The last
        request's keep_alive wins, then the model's ttl, then settings.ttl."""
        if service.keep_alive is not None:
            return None if math.isinf(service.keep_alive) else service.keep_alive
        ttl = service.config.ttl if service.config.ttl is not None else self.settings.ttl
        return ttl or None

    # --- reloading models.yaml ---------------------------------------------------

    async def reconfigure(self, config: Config, drain: float) -> dict[str, list[str]]:
        """Apply a new configuration. Settings apply at once, and so do
        changes to policy fields (ttl, priority, pinned, limits ...). Added
        models can be requested at once. Removed models, and those whose
        engine, weights, command, arguments or GPUs changed, are drained
        (a load in progress finishes, in-flight requests get up to `drain`
        seconds) and stopped; a changed one then starts in its new form on its
        next request, and new requests wait for that at its gate rather than
        prolong the drain. Callers serialize reloads. Returns what changed."""
        old, new = self.config.models, config.models
        added = [m for m in new if m not in old]
        removed = [m for m in old if m not in new]
        changed = [m for m in new if m in old and new[m] != old[m]]
        restarted = [m for m in changed if _needs_restart(old[m], new[m])]
        # Per service: a model's local replicas (replicas.local) come and go with its count.
        old_services, new_services = services_of(self.config), services_of(config)
        self.config = config
        self.settings = config.settings
        self.pools = memory_pools(config, self.inventory)
        for service_id, model_id in new_services.items():
            if service_id not in old_services:
                self.services[service_id] = self._new_service(service_id, new[model_id])
        for service_id, model_id in old_services.items():
            if model_id in changed and model_id not in restarted and service_id in new_services:
                service = self.services[service_id]
                service.config = new[model_id]  # read live; memory_gb counts from its next start
                if old[model_id].max_concurrency != new[model_id].max_concurrency:
                    service.set_concurrency()
        draining = [self.services[service_id] for service_id, model_id in old_services.items()
                    if service_id not in new_services or model_id in restarted]
        for service in draining:
            service.retired = True
            service.gate.close("reload")
        await asyncio.gather(*(self._replace(service, new.get(service.model_id) if service.id in new_services
                                             else None, drain) for service in draining))
        self._warn_of_replicas()
        updated = [m for m in changed if m not in restarted]
        return {"added": added, "removed": removed, "changed": restarted, "updated": updated}

    async def _replace(self, service: Service, model: ModelConfig | None, drain: float) -> None:
        """Drain and stop service, then swap in its new configuration (or,
        with model None, remove it), and let the requests at its gate go on."""
        deadline = time.monotonic() + drain
        try:
            loading = service.load_task
            if loading is not None and not loading.done():
                # Its requests are waiting for this load: let it finish and serve them.
                await asyncio.wait([loading], timeout=drain)
            await self._unload(service, max(0.0, deadline - time.monotonic()), "reload")
        finally:
            if service.holds_memory:  # cancelled midway: it counts until it is gone
                self._retired.add(service)
                if service.state is not State.STOPPING:
                    self._spawn(self._unload(service, 0.0, "reload"))
            if model is None:
                self.services.pop(service.id, None)
            else:
                self.services[service.id] = self._new_service(service.id, model)
            self.sizing.forget(service.model_id)
            service.gate.open("reload")
            self._notify()

    # --- bookkeeping --------------------------------------------------------------

    def _count_sleep(self, service: Service, outcome: str) -> None:
        if self.metrics:
            self.metrics.sleeps.labels(service.id, outcome).inc()

    def _count_load(self, service: Service, outcome: str, seconds: float | None = None) -> None:
        if self.metrics:
            self.metrics.loads.labels(service.id, outcome).inc()
            if seconds is not None:
                self.metrics.load_seconds.labels(service.id).observe(seconds)

    def _set_state(self, service: Service, state: State) -> None:
        old, service.state = service.state, state
        for observer in self.observers:
            try:
                observer(service, old, state)
            except Exception:  # noqa: BLE001 - a broken observer must not wedge a service
                log.exception("state observer failed")

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


def services_of(config: Config) -> dict[str, str]:
    """Every service config asks for, service id -> model id: one per model,
    and one more for each further local replica (replicas.local)."""
    return {service_id: model_id for model_id, model in config.models.items()
            for service_id in local_service_ids(model_id, model.replicas.local_count if model.replicas else 1)}


def memory_pools(config: Config, inventory: Inventory) -> list[Pool]:
    """The host's RAM and each GPU, with what services may reserve on each."""
    ram_gb = psutil.virtual_memory().total / GIB
    host_budget = config.settings.memory_budget_gb or round(ram_gb * DEFAULT_HOST_SHARE, 2)
    pools = [Pool(HOST, host_budget, ram_gb, label="host memory")]
    for gpu in inventory.gpus:
        budget = max(0.0, gpu.total_gb - config.settings.gpu_reserve_gb)
        pools.append(Pool(f"gpu{gpu.index}", budget, gpu.total_gb, gpu.index, gpu.name))
    return pools


def _no_room_for_replica(service: Service, why: str) -> ServiceError:
    return ServiceError(503, f"local replica '{service.id}' of model '{service.model_id}' cannot start without taking "
                        f"the place of its other replicas, which it never evicts: {why}", code="no_room_for_replica",
                        retry_after=5)


def _merged(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {name: a.get(name, 0.0) + b.get(name, 0.0) for name in {**a, **b}}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return exc.message
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _needs_restart(old: ModelConfig, new: ModelConfig) -> bool:
    if _lora_settings(old) != _lora_settings(new):
        return True  # its adapters alone load and unload live
    return any(getattr(old, name) != getattr(new, name) for name in RESTART_FIELDS)


def _lora_settings(model: ModelConfig) -> dict[str, Any] | None:
    return model.lora.settings() if model.lora else None


def _backoff(failures: int) -> float:
    """Seconds before the next start after `failures` failures: 1, 2, 4 ... 60."""
    return min(2.0 ** (max(failures, 1) - 1), MAX_BACKOFF)


def _being_cancelled() -> bool:
    """Whether the running task itself has been asked to stop."""
    task = asyncio.current_task()
    return bool(task and task.cancelling())
