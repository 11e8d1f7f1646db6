"""What the scheduler knows about one configured model: its state, its
process, its reservation, and the requests on it (the scheduler changes it;
everything else only reads it)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.config import ModelConfig
from core.engines import GpuAssignment
from core.process import ServiceProcess
from orchestrator.placement import Placement
from orchestrator.usage import Usage


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    # The sleep tier (models.yaml `sleep`): weights in host memory, process alive.
    SLEEPING = "sleeping"  # the sleep call is under way; GPU and host memory both held
    ASLEEP = "asleep"  # holds host memory only
    WAKING = "waking"  # the wake call is under way; GPU and host memory both held


HOLDING_MEMORY = (State.STARTING, State.READY, State.STOPPING, State.SLEEPING, State.ASLEEP, State.WAKING)


class Gate:
    """Holds a service's new requests (not yet in flight) while something
    drains it: a reload, or a load that has waited long for its memory. Open
    once every holder has let go."""

    def __init__(self) -> None:
        self._holders: set[str] = set()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def closed(self) -> bool:
        return bool(self._holders)

    def close(self, holder: str) -> None:
        self._holders.add(holder)
        self._open.clear()

    def open(self, holder: str) -> None:
        self._holders.discard(holder)
        if not self._holders:
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


@dataclass(eq=False)  # compared and hashed by identity: a reload may make two of one id
class Service:
    id: str  # the model's id, or chat~2 for a model's further local replica (core/replica_config.py)
    config: ModelConfig
    model_id: str = ""  # the models.yaml entry it serves (set from id when not given)
    state: State = State.STOPPED
    process: ServiceProcess | None = None
    port: int | None = None
    in_flight: int = 0  # requests holding or waiting for this service
    queued: int = 0  # of those, waiting for a concurrency slot
    last_used: float = 0.0
    heat: float = 0.0  # requests, decayed with HEAT_HALF_LIFE: recency and frequency in one number
    heat_at: float = 0.0
    started_at: float | None = None
    load_seconds: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    starts: int = 0
    load_task: asyncio.Task[None] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None
    gpus: int = 0  # GPUs it needs (config `gpus`, resolved against the inventory)
    fingerprint: str = ""
    placement: Placement | None = None  # where its memory is reserved, while it holds memory
    assignment: GpuAssignment | None = None
    need_source: str = "unknown"  # where its memory need came from: config, measured, estimate ...
    measured_gb: float | None = None  # the peak seen during this run
    gate: Gate = field(default_factory=Gate)
    # A reload replaced it: it may finish what it serves, but never starts again.
    retired: bool = False
    keep_alive: float | None = None  # idle seconds to stay loaded, from the last request that said
    home: Placement | None = None  # asleep: the GPUs it wakes on (its CUDA context lives there)
    transition: asyncio.Task[None] | None = None  # the sleep call under way
    sleeps: int = 0
    wakes: int = 0
    # LoRA adapters loaded in the process lora_pid (orchestrator/adapters.py): name -> path.
    lora_loaded: dict[str, str] = field(default_factory=dict)
    lora_pid: int | None = None
    lora_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.model_id = self.model_id or self.id
        self.stopped.set()
        self.set_concurrency()

    def set_concurrency(self) -> None:
        # Leases keep the semaphore they took, so replacing it is safe.
        limit = self.config.max_concurrency
        self.slots = asyncio.Semaphore(limit) if limit else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDING_MEMORY

    @property
    def can_sleep(self) -> bool:
        return self.config.sleep is not None and self.gpus > 0

    def evictable(self) -> bool:
        return self.state in (State.READY, State.ASLEEP) and self.in_flight == 0 and not self.config.pinned

    @property
    def reserved_gb(self) -> float:
        return sum(self.placement.reservation.values()) if self.placement else 0.0


class Lease:
    """A request's hold on a ready service; release() exactly once."""

    __slots__ = ("service", "url", "waited", "responded", "broken", "usage", "granted", "_on_release", "_released",
                 "_slot")

    def __init__(
        self,
        service: Service,
        waited: float,
        slot: asyncio.Semaphore | None,
        on_release: Callable[[Service, asyncio.Semaphore | None], None],
    ) -> None:
        self.service = service
        self.url = service.url
        self.waited = waited
        self.responded = False  # the proxy set it once the answer's headers went out
        self.broken = False  # the proxy set it when a stream it had begun broke off (the status said 200)
        self.usage: Usage | None = None  # what the answer used, once the proxy knows (orchestrator/usage.py)
        self.granted = time.monotonic()  # for GPU-seconds: how long the request held the service
        self._slot = slot  # the semaphore it took (the service may get a new one)
        self._on_release = on_release
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._on_release(self.service, self._slot)
