"""Prometheus metrics of the scheduler: loads and load time, stops and why,
crashes, waits, and, read at scrape time, each service's state, queue and
memory and each pool's (host, GPU) budget and reservations. And of the
requests (RequestMetrics): by model, route and status, their latency and
time to first byte, and the refusals before any model (auth, limits).

One registry per app (not prometheus-client's global one), so that several
apps in one process (tests) do not collide. GET /metrics serves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.gpu import from_nvml

if TYPE_CHECKING:
    from orchestrator.scheduler import Scheduler, Service, State
    from orchestrator.usage import Usage

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# What a refused request's code says about why, for modelyard_requests_refused.
REFUSALS = (401, 403, 413, 429)


class RequestMetrics:
    """The model routes' requests. `model` is a configured model id, or ""
    when the request never got to one (an unknown name, invalid JSON): never
    a client's string, so the series stay few."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "modelyard_requests", "Requests on the model routes, by model, route and status.",
            ["model", "route", "status"], registry=registry,
        )
        self.seconds = Histogram(
            "modelyard_request_seconds", "Arrival to the end of the answer (whole stream included).",
            ["model", "route"], buckets=REQUEST_BUCKETS, registry=registry,
        )
        self.first_byte = Histogram(
            "modelyard_request_first_byte_seconds",
            "Arrival to the first byte of the answer's body: for a stream, its first event (time to first token).",
            ["model", "route"], buckets=REQUEST_BUCKETS, registry=registry,
        )
        self.refused = Counter(
            "modelyard_requests_refused",
            "Requests refused before any model, by code (missing_api_key, insufficient_scope, rate_limited, "
            "quota_exceeded, body_too_large ...).", ["code"], registry=registry,
        )
        self.tokens = Counter(
            "modelyard_tokens", "Tokens of answered requests, by model and kind (prompt, completion); a stream the "
            "client left is estimated.", ["model", "kind"], registry=registry,
        )
        self.cost = Counter(
            "modelyard_cost", "What answered requests cost at the models' prices (settings.currency).", ["model"],
            registry=registry,
        )

    def finished(self, model: str, route: str, status: int, seconds: float, first_byte: float | None) -> None:
        self.requests.labels(model, route, str(status)).inc()
        self.seconds.labels(model, route).observe(seconds)
        if first_byte is not None:
            self.first_byte.labels(model, route).observe(first_byte)

    def used(self, model: str, usage: Usage, cost: float) -> None:
        if usage.prompt_tokens:
            self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(model, "completion").inc(usage.completion_tokens)
        if cost:
            self.cost.labels(model).inc(cost)

    def refusal(self, status: int, code: str | None) -> None:
        if status in REFUSALS and code:
            self.refused.labels(code).inc()


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "modelyard_service_transitions", "Service state changes.", ["model", "from_state", "to_state"],
            registry=registry,
        )
        self.loads = Counter(
            "modelyard_service_loads", "Service starts by outcome (ready, failed, cancelled).", ["model", "outcome"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "modelyard_service_load_seconds", "Start to healthy, for services that became ready.", ["model"],
            buckets=LOAD_BUCKETS, registry=registry,
        )
        self.stops = Counter(
            "modelyard_service_stops",
            "Services stopped on purpose, by reason (memory: evicted for another model; ttl; unload; shutdown).",
            ["model", "reason"], registry=registry,
        )
        self.crashes = Counter("modelyard_service_crashes", "Services that exited on their own.", ["model"],
                               registry=registry)
        self.sleeps = Counter(
            "modelyard_service_sleeps", "Services put to sleep instead of stopped, by outcome (asleep, failed).",
            ["model", "outcome"], registry=registry,
        )
        self.wake_seconds = Histogram(
            "modelyard_service_wake_seconds", "Wake call to ready, for services woken from sleep.", ["model"],
            buckets=WAIT_BUCKETS, registry=registry,
        )
        self.wait_seconds = Histogram(
            "modelyard_request_wait_seconds",
            "Time a request waited for its service (load, memory, concurrency slot) before being forwarded.",
            ["model"], buckets=WAIT_BUCKETS, registry=registry,
        )

    def transition(self, service: "Service", old: "State", new: "State") -> None:
        self.transitions.labels(service.id, old.value, new.value).inc()


class SchedulerCollector(Collector):
    """Gauges read from the scheduler when Prometheus scrapes."""

    def __init__(self, scheduler: "Scheduler") -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from orchestrator.scheduler import State

        services = list(self.scheduler.services.values())
        state = GaugeMetricFamily("modelyard_service_state", "1 for the state the service is in.", labels=["model", "state"])
        in_flight = GaugeMetricFamily("modelyard_service_in_flight", "Requests holding or awaiting the service.",
                                      labels=["model"])
        queued = GaugeMetricFamily("modelyard_service_queue_depth", "Requests waiting for a concurrency slot.",
                                   labels=["model"])
        reserved = GaugeMetricFamily("modelyard_service_reserved_gb", "Memory reserved for the service, by pool.",
                                     labels=["model", "pool"])
        measured = GaugeMetricFamily("modelyard_service_measured_gb", "Peak memory measured during this run.",
                                     labels=["model"])
        for service in services:
            for each in State:
                state.add_metric([service.id, each.value], 1.0 if service.state is each else 0.0)
            in_flight.add_metric([service.id], service.in_flight)
            queued.add_metric([service.id], service.queued)
            if service.placement is not None:
                for pool, gb in service.placement.reservation.items():
                    reserved.add_metric([service.id, pool], gb)
            if service.measured_gb is not None:
                measured.add_metric([service.id], service.measured_gb)
        budget = GaugeMetricFamily("modelyard_pool_budget_gb", "What services may reserve in each memory pool.",
                                   labels=["pool"])
        held = GaugeMetricFamily("modelyard_pool_reserved_gb", "What services reserve in each memory pool now.",
                                 labels=["pool"])
        holders = list(self.scheduler.memory_holders())
        for pool in self.scheduler.pools:
            if pool.budget_gb is not None:
                budget.add_metric([pool.name], pool.budget_gb)
            held.add_metric(
                [pool.name],
                sum(s.placement.reservation.get(pool.name, 0.0) for s in holders if s.placement is not None),
            )
        yield from (state, in_flight, queued, reserved, measured, budget, held)
        yield from self._gpus()

    def _gpus(self) -> Iterator[GaugeMetricFamily]:
        """Each GPU's memory: its size, and on real GPUs what NVML says is used now."""
        inventory = self.scheduler.inventory
        measured = inventory.source == "nvml"
        gpus = from_nvml().gpus if measured else inventory.gpus  # NVML read at scrape time: what is true now
        total = GaugeMetricFamily("modelyard_gpu_memory_total_bytes", "Each GPU's memory (simulated ones too).",
                                  labels=["gpu", "name"])
        used = GaugeMetricFamily("modelyard_gpu_memory_used_bytes", "Each GPU's memory in use now, by any "
                                 "process (NVML; absent for simulated GPUs).", labels=["gpu", "name"])
        for gpu in gpus:
            total.add_metric([str(gpu.index), gpu.name], gpu.total_bytes)
            if measured:
                used.add_metric([str(gpu.index), gpu.name], gpu.used_bytes)
        yield from (total, used)
