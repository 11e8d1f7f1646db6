"""Replicas of a model (models.yaml `replicas:`): its local services (one,
or `local: N`, each on GPUs of its own) and peers, one picked per request by
the model's strategy among those healthy now, another tried when the first
fails before any byte reached the client.

    endpoint._handle -> Router.forward(model) -> pick (strategies.py) among
    available replicas (health.py) -> local: scheduler lease on its service
    (chat, chat~2 ...) | peer: its URL and key -> Proxy.forward through an
    AttemptSend that holds back a retryable failure (retry.py) -> next
    replica, or the answer

Peers are checked actively (GET health_path every health.interval); every
replica's requests feed its circuit breaker. Local services have no active
check: the scheduler starts each on demand, and its failures to start or
answer feed its breaker like a peer's.

With several local services (`local: N`), one that is not running is passed
over while a running replica could take the request; when every running
one is busy, it is started in the background (Router.warm_up), so that no
request waits for a load while another replica could answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from core.config import Config, expand
from core.errors import ServiceError, error_body
from core.logs import log_event
from core.replica_config import PeerConfig, ReplicasConfig, local_replica_name, local_service_ids
from orchestrator.proxy import UPSTREAM_ERROR_HEADER, WHILE_ANSWERING, Proxy, send_json
from orchestrator.routing.health import BreakerSettings, EndpointHealth, HealthSettings, check_forever, safe_reason
from orchestrator.routing.retry import RETRYABLE_STATUSES, RetryPolicy
from orchestrator.routing.strategies import Endpoint, NoEndpoint, Strategy, make_strategy
from orchestrator.usage import StreamUsage

log = logging.getLogger("modelyard.router")

HOP_HEADER = "x-modelyard-hop"  # on requests one appliance forwards to another (endpoint.py reads it)
PEER_REFUSED = frozenset({401, 403})  # a peer refusing our key: its problem (or ours), never the client's
# A peer's answers that are about the peer, not the request: another replica may serve it.
PEER_RETRYABLE = frozenset({401, 403, 404, 429})


class LocalServices(Protocol):
    """What the router asks of the scheduler about local replicas' services."""

    def running(self, service_id: str) -> bool: ...

    async def load(self, service_id: str) -> Any: ...


@dataclass
class Replica:
    name: str  # "local", "local-2" ... or the peer's name
    endpoint: Endpoint
    health: EndpointHealth
    peer: PeerConfig | None = None
    api_key: str | None = None  # the peer's key, ${ENV} expanded; never logged
    service_id: str | None = None  # a local one's scheduler service: chat, chat~2 ...


@dataclass
class Routed:
    """What the endpoint needs to know of a routed request: the lease whose
    answer the client is getting (for accounting and cancellation)."""

    lease: Any = None
    replica: str | None = None


class PeerService:
    """What Proxy.forward and the accounting read of a service, for a peer."""

    def __init__(self, model_id: str) -> None:
        self.id = model_id
        self.gpus = 0  # not ours: no GPU-seconds counted here


class PeerLease:
    """A Lease-like hold on a peer: nothing to release, its URL and key."""

    def __init__(self, model_id: str, url: str, api_key: str | None) -> None:
        self.service = PeerService(model_id)
        self.url = url
        # HOP_HEADER: the peer serves it itself (no loop between appliances that list each other);
        # identity: a compressed answer could not be read for its usage.
        self.headers = {HOP_HEADER: "1", "accept-encoding": "identity"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.waited = 0.0
        self.responded = False
        self.usage: Any = None
        self.granted = time.monotonic()

    def release(self) -> None:
        pass


class AttemptSend:
    """The ASGI send for one attempt: passes the answer through, except a
    retryable failure (502, 503, 504; a peer's 401 and 403) while another
    attempt may follow, which it swallows and notes. On the last attempt a
    peer's refusal of our key becomes our own 502 (the client's key is fine)."""

    def __init__(self, send: Any, *, may_retry: bool, peer: str | None, on_start: Callable[[], None]) -> None:
        self.send = send
        self.may_retry = may_retry
        self.peer = peer
        self.on_start = on_start
        self.status: int | None = None
        self.swallowed = False
        self.replaced = False
        self.held = b""  # a swallowed answer's start: its error message says why

    def _retryable(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        if (UPSTREAM_ERROR_HEADER, WHILE_ANSWERING) in headers:  # the model may have run: never twice
            return False
        return status in RETRYABLE_STATUSES or (self.peer is not None and status in PEER_RETRYABLE)

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.may_retry and self._retryable(self.status, message.get("headers", [])):
                self.swallowed = True
                return
            if self.peer is not None and self.status in PEER_REFUSED:
                self.replaced = True
                self.on_start()
                body = error_body(502, f"replica '{self.peer}' refused this appliance's API key (HTTP {self.status}); "
                                  "check replicas.peers[].api_key", "peer_refused")
                await send_json(self.send, 502, body, [])
                return
            self.on_start()
            await self.send(message)
            return
        if self.swallowed and len(self.held) < 4096:
            self.held += message.get("body", b"")
        if self.swallowed or self.replaced:
            return
        await self.send(message)

    def reason(self) -> str:
        """What a swallowed answer said: its error's code and message, else its status."""
        try:
            error = orjson.loads(self.held)["error"]
            return safe_reason(f"HTTP {self.status} {error.get('code')}: {error.get('message')}")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"HTTP {self.status}"


class ModelReplicas:
    """One model's replicas and strategy."""

    def __init__(self, model_id: str, config: ReplicasConfig, rng: random.Random | None = None) -> None:
        self.model_id = model_id
        self.config = config
        self.strategy: Strategy = (make_strategy(config.strategy, rng=rng, load_factor=config.load_factor)
                                   if config.strategy == "consistent_hash" else make_strategy(config.strategy, rng=rng))
        self.policy = RetryPolicy(attempts=config.attempts)
        health = HealthSettings(interval=config.health.interval, timeout=config.health.timeout,
                                unhealthy_after=config.health.unhealthy_after,
                                healthy_after=config.health.healthy_after)
        breaker = BreakerSettings(failure_threshold=config.breaker.failure_threshold,
                                  open_seconds=config.breaker.open_seconds,
                                  max_open_seconds=config.breaker.max_open_seconds)
        self.health_settings = health
        self.replicas: dict[str, Replica] = {}
        for number, service_id in enumerate(local_service_ids(model_id, config.local_count)[:config.local_count], 1):
            name = local_replica_name(number)
            endpoint_id = f"{model_id}#{name}"
            self.replicas[name] = Replica(name, Endpoint(endpoint_id, config.local_weight),
                                          EndpointHealth(endpoint_id, health, breaker), service_id=service_id)
        for peer in config.peers:
            endpoint_id = f"{model_id}#{peer.name}"
            self.replicas[peer.name] = Replica(peer.name, Endpoint(endpoint_id, peer.weight),
                                               EndpointHealth(endpoint_id, health, breaker), peer,
                                               expand(peer.api_key, {}) if peer.api_key else None)

    def peers(self) -> dict[str, EndpointHealth]:
        return {name: r.health for name, r in self.replicas.items() if r.peer is not None}

    def pick(self, key: str | None, tried: set[str], local_only: bool = False) -> Replica | None:
        """The strategy's choice among the available replicas not tried yet (local_only: no
        peer); it takes a half-open breaker's probe slot (usable()), or the next choice is made."""
        while True:
            left = [r for name, r in self.replicas.items() if name not in tried and r.health.available()
                    and not (local_only and r.peer is not None)]
            if not left:
                return None
            by_id = {r.endpoint.id: r for r in left}
            try:
                chosen = by_id[self.strategy.pick([r.endpoint for r in left], key).id]
            except NoEndpoint:
                return None
            if chosen.health.usable():
                return chosen
            tried = tried | {chosen.name}  # its half-open slot was just taken by another request

    def cold(self, tried: set[str], local_only: bool, running: Callable[[str], bool]) -> tuple[set[str], bool]:
        """With several local replicas: the names of the available ones whose service is not
        running, to pass over while a running replica (or a peer) could serve; and whether
        every one of those is busy (then a cold one should start). When none runs, all but
        the first cold one: the request waits for that one (chat before chat~2) to start."""
        if self.config.local_count < 2:
            return set(), False
        left = [r for name, r in self.replicas.items() if name not in tried and r.health.available()
                and not (local_only and r.peer is not None)]
        cold = [r.name for r in left if r.service_id is not None and not running(r.service_id)]
        warm = [r for r in left if r.name not in cold]
        if not warm:
            return set(cold[1:]), False
        return set(cold), bool(cold) and all(r.endpoint.outstanding > 0 for r in warm)

    def others_available(self, tried: set[str], local_only: bool = False) -> bool:
        return any(name not in tried and r.health.available() and not (local_only and r.peer is not None)
                   for name, r in self.replicas.items())

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "strategy": self.config.strategy, "attempts": self.config.attempts,
                "replicas": [{"name": r.name, "kind": "local" if r.peer is None else "peer",
                              "service": r.service_id, "url": r.peer.url if r.peer else None,
                              "weight": r.endpoint.weight,
                              "outstanding": r.endpoint.outstanding,
                              "latency_ewma_ms": round(r.endpoint.latency_ewma * 1000, 1)
                              if r.endpoint.latency_ewma is not None else None,
                              **r.health.describe()} for r in self.replicas.values()]}


@dataclass
class Router:
    proxy: Proxy
    local: LocalServices | None = None  # the scheduler: which local services run, and starting one
    models: dict[str, ModelReplicas] = field(default_factory=dict)
    _checks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _warming: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # model id -> its latest background start
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def of(cls, config: Config, proxy: Proxy, local: LocalServices | None = None) -> Router:
        router = cls(proxy, local)
        router.models = {model_id: ModelReplicas(model_id, model.replicas)
                         for model_id, model in config.models.items() if model.replicas is not None}
        return router

    def replicas_of(self, model_id: str) -> ModelReplicas | None:
        return self.models.get(model_id)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for replicas in self.models.values():
            self._start_checks(replicas)

    def _start_checks(self, replicas: ModelReplicas) -> None:
        healths = replicas.peers()
        if not healths:
            return

        by_endpoint = {r.endpoint.id: r for r in replicas.replicas.values()}

        async def probe(endpoint_id: str) -> None:  # check_forever names endpoints by their health's id
            await self._probe(by_endpoint[endpoint_id])

        self._checks[replicas.model_id] = asyncio.create_task(
            check_forever(healths, probe, replicas.health_settings), name=f"replica-checks-{replicas.model_id}")

    async def _probe(self, replica: Replica) -> None:
        """Raises unless the peer's health path answers 200 (check_forever times it)."""
        assert self._session is not None and replica.peer is not None
        headers = {"authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}
        async with self._session.get(replica.peer.url + replica.peer.health_path, headers=headers) as answer:
            if answer.status != 200:
                raise RuntimeError(f"{replica.peer.health_path} answered HTTP {answer.status}")

    def apply(self, config: Config) -> None:
        """A reload: models whose replicas changed start over (health and breakers anew); others keep theirs.
        Synchronous: the reload applies the registry and scheduler without a pause in between."""
        wanted = {model_id: model.replicas for model_id, model in config.models.items() if model.replicas}
        fresh = {model_id: ModelReplicas(model_id, replicas_config) for model_id, replicas_config in wanted.items()
                 if model_id not in self.models or self.models[model_id].config != replicas_config}
        for model_id in list(self.models):  # built first: a bad setting changes nothing
            if model_id not in wanted or model_id in fresh:
                self._stop_checks(model_id)
                del self.models[model_id]
        for model_id, replicas in fresh.items():
            self.models[model_id] = replicas
            if self._session is not None:
                self._start_checks(replicas)

    def _stop_checks(self, model_id: str) -> None:
        task = self._checks.pop(model_id, None)
        if task is not None:
            task.cancel()  # it ends at its next await; nothing waits for it

    def warm_up(self, replicas: ModelReplicas, cold: set[str]) -> None:
        """Start the first of the model's cold local replicas in the background, unless one is starting."""
        starting = self._warming.get(replicas.model_id)
        if self.local is None or (starting is not None and not starting.done()):
            return
        service_id = next(r.service_id for name, r in replicas.replicas.items() if name in cold and r.service_id)
        local = self.local

        async def start() -> None:
            try:
                await local.load(service_id)
                log_event(log, "local replica started for the load", model=replicas.model_id, replica=service_id)
            except ServiceError as exc:  # its requests would have met the same; it is tried again when needed
                log_event(log, "local replica could not start", logging.WARNING, model=replicas.model_id,
                          replica=service_id, reason=safe_reason(exc.message))

        self._warming[replicas.model_id] = asyncio.create_task(start(), name=f"warm-{service_id}")

    async def close(self) -> None:
        for task in list(self._warming.values()):
            task.cancel()
        tasks = list(self._checks.values())
        for model_id in list(self._checks):
            self._stop_checks(model_id)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            session, self._session = self._session, None  # a reload after this starts no checks
            await session.close()

    async def forward(self, replicas: ModelReplicas, routed: Routed, *, route: str, payload: dict[str, Any],
                      upstream_name: str, request_id: bytes, began: float, send: Any,
                      transform: Callable[[bytes], bytes] | None, meter: StreamUsage | None,
                      acquire_local: Callable[[str], Awaitable[Any]], key: str | None,
                      local_only: bool = False) -> None:
        """Answer the request from one replica, trying others while nothing went back;
        acquire_local(service id) leases a local one. local_only: no peer (the request
        came from one). Raises ServiceError (nothing sent) when every try failed or
        none is healthy."""
        tried: set[str] = set()
        last: ServiceError | None = None
        for attempt in range(1, replicas.policy.attempts + 1):
            if attempt > 1:  # before the pick: no half-open slot is held while waiting
                await asyncio.sleep(replicas.policy.delay(attempt - 1))
            cold: set[str] = set()
            if self.local is not None:
                cold, all_busy = replicas.cold(tried, local_only, self.local.running)
                if all_busy:
                    self.warm_up(replicas, cold)
            replica = replicas.pick(key, tried | cold, local_only)
            if replica is None:
                break
            tried.add(replica.name)
            final = attempt == replicas.policy.attempts or not replicas.others_available(tried, local_only)
            failure = await self._attempt(replicas, replica, routed, final, route=route, payload=payload,
                                          upstream_name=upstream_name, request_id=request_id, began=began,
                                          send=send, transform=transform, meter=meter, acquire_local=acquire_local)
            if failure is None:
                return
            last = failure
            log_event(log, "replica failed before answering", logging.WARNING, model=replicas.model_id,
                      replica=replica.name, reason=safe_reason(failure.message), request_id=request_id.decode())
        if last is not None:
            raise last
        raise ServiceError(503, f"no healthy replica of model '{replicas.model_id}': every one failed its health "
                           "checks or has its circuit open (GET /admin/replicas)", code="no_healthy_replica",
                           retry_after=5)

    @staticmethod
    async def _lease(replicas: ModelReplicas, replica: Replica, acquire_local: Callable[[str], Awaitable[Any]]) -> Any:
        """A lease on a local replica's service; on the model's first one when a reload just
        took this one away (chat~2 gone: chat serves)."""
        assert replica.service_id is not None
        try:
            return await acquire_local(replica.service_id)
        except ServiceError as exc:
            if exc.code != "model_not_found" or replica.service_id == replicas.model_id:
                raise
        return await acquire_local(replicas.model_id)

    async def _attempt(self, replicas: ModelReplicas, replica: Replica, routed: Routed, final: bool, *,
                       route: str, payload: dict[str, Any], upstream_name: str, request_id: bytes, began: float,
                       send: Any, transform: Callable[[bytes], bytes] | None, meter: StreamUsage | None,
                       acquire_local: Callable[[str], Awaitable[Any]]) -> ServiceError | None:
        """One try: None when the client got this replica's answer; the failure when it may go elsewhere."""
        started = time.perf_counter()
        replica.endpoint.begin()
        settled = False
        try:
            if replica.peer is None:
                try:
                    lease = await self._lease(replicas, replica, acquire_local)
                except ServiceError as exc:
                    if exc.code == "shutting_down":  # ours, not the replica's: said as it is
                        raise
                    if exc.status >= 500:  # could not start or serve here; another replica may
                        replica.health.request_failed(safe_reason(f"{exc.code}: {exc.message}"))
                        settled = True
                        if not final:
                            return exc
                    elif exc.status == 429 and not final:  # its queue is full: another replica may have room
                        return exc
                    raise
                body = orjson.dumps({**payload, "model": upstream_name})
            else:
                lease = PeerLease(replicas.model_id, replica.peer.url, replica.api_key)
                body = orjson.dumps({**payload, "model": replica.peer.model or replicas.model_id})

            def started_answer() -> None:
                routed.lease, routed.replica = lease, replica.name

            guard = AttemptSend(send, may_retry=not final, peer=replica.name if replica.peer else None,
                                on_start=started_answer)
            await self.proxy.forward(lease, route, body, request_id, began, guard, transform, meter)
            status = guard.status or 0
            settled = True
            if guard.swallowed or guard.replaced or status >= 500:
                replica.health.request_failed(guard.reason())
                if guard.swallowed:
                    return ServiceError(502, f"replica '{replica.name}' of model '{replicas.model_id}' failed: "
                                        f"{guard.reason()}", code="replica_failed", retry_after=5)
                return None
            replica.health.request_succeeded()
            # The answer's time, not the local model's load: a cold start says nothing of its speed.
            replica.endpoint.observe_latency(max(0.0, time.perf_counter() - started - lease.waited))
            return None
        finally:
            replica.endpoint.end()
            if not settled:
                replica.health.release()  # cancelled (the client left): neither success nor failure
