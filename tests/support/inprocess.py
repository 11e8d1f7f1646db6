"""The whole orchestrator app served in the test's own event loop (real
uvicorn, real HTTP, real service processes), so that a test can watch the
scheduler's every state change and check the invariants at each one."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvicorn
import yaml

from core.config import load_config
from core.gpu import discover
from core.process import INSTANCE_ENV, SERVICE_ID_ENV, free_port
from orchestrator.app import create_app
from orchestrator.placement import EPSILON
from orchestrator.scheduler import Scheduler, Service, State

ALLOWED_TRANSITIONS = {
    (State.STOPPED, State.STARTING),
    (State.FAILED, State.STARTING),
    (State.STARTING, State.READY),
    (State.STARTING, State.STOPPING),
    (State.READY, State.STOPPING),
    (State.STOPPING, State.STOPPED),
    (State.STOPPING, State.FAILED),
    (State.FAILED, State.STOPPED),
    # the sleep tier
    (State.READY, State.SLEEPING),
    (State.SLEEPING, State.ASLEEP),
    (State.SLEEPING, State.STOPPING),
    (State.ASLEEP, State.WAKING),
    (State.ASLEEP, State.STOPPING),
    (State.WAKING, State.READY),
    (State.WAKING, State.STOPPING),
}


def live_processes(instance: str, service_id: str | None = None) -> list[psutil.Process]:
    """Live (not zombie) processes started for this orchestrator instance (for one service: chat, chat~2)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
            if env.get(INSTANCE_ENV) != instance or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if service_id is None or env.get(SERVICE_ID_ENV) == service_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@dataclass
class InvariantChecker:
    """A scheduler observer: after every state change, no pool over its
    budget, a legal transition, no two local replicas of a model on one GPU,
    and no second process for a starting service."""

    scheduler: Scheduler
    instance: str
    violations: list[str] = field(default_factory=list)
    transitions: int = 0
    starts: dict[str, int] = field(default_factory=dict)

    def __call__(self, service: Service, old: State, new: State) -> None:
        self.transitions += 1
        if (old, new) not in ALLOWED_TRANSITIONS:
            self.violations.append(f"{service.id}: illegal transition {old.value} -> {new.value}")
        holders = list(self.scheduler.memory_holders())  # replaced-but-stopping ones too
        for pool in self.scheduler.pools:
            held = sum(s.placement.reservation.get(pool.name, 0.0) for s in holders if s.placement is not None)
            if pool.budget_gb is not None and held > pool.budget_gb + EPSILON:
                self.violations.append(f"{pool.name}: {held:g} GB reserved over a budget of {pool.budget_gb:g} GB")
        # On a GPU or about to be (stopping ones are on their way out, maybe from asleep).
        running = (State.STARTING, State.READY, State.SLEEPING, State.WAKING)
        for name, group in self.scheduler.config.groups.items():
            if not group.swap:
                continue
            members = sorted({s.model_id for s in holders if s.model_id in group.members and s.state in running})
            if len(members) > 1:
                self.violations.append(f"swap group {name}: {members} run at once")
        gpus_of: dict[str, dict[str, str]] = {}  # model -> GPU pool -> the replica holding it
        for holder in holders:
            if holder.retired or holder.placement is None:
                continue
            taken = gpus_of.setdefault(holder.model_id, {})
            # Where it is, and where it will wake (asleep, its home GPUs are kept for it).
            pools = {p for placement in (holder.placement, holder.home) if placement for p in placement.pools}
            for pool in sorted(pools - {"host"}):
                if pool in taken:
                    self.violations.append(f"{holder.id} and {taken[pool]} (replicas of one model) share {pool}")
                taken[pool] = holder.id
        if new is State.STARTING:
            self.starts[service.id] = self.starts.get(service.id, 0) + 1
            running = live_processes(self.instance, service.id)
            if running:
                self.violations.append(f"{service.id}: starting while pid {running[0].pid} of it still runs")


@dataclass
class Harness:
    url: str
    scheduler: Scheduler
    checker: InvariantChecker
    instance: str
    session: aiohttp.ClientSession
    config_path: Path  # the models.yaml it serves: rewrite it, then POST /admin/reload
    original_models: dict[str, Any] = field(default_factory=dict)  # for tests that edit the config
    original_groups: dict[str, Any] = field(default_factory=dict)

    async def chat(self, model: str, *, stream: bool = False, delay_ms: int = 0) -> tuple[int, Any]:
        """(status, body): the JSON body, or for a stream the list of events."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        if delay_ms:
            body["fake_delay_ms"] = delay_ms
        async with self.session.post(self.url + "/v1/chat/completions", json=body) as response:
            if stream and response.status == 200:
                text = await response.text()
                events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
                return response.status, events
            return response.status, await response.json()

    async def admin(self, method: str, path: str) -> tuple[int, Any]:
        async with self.session.request(method, self.url + "/admin" + path) as response:
            return response.status, await response.json()


@asynccontextmanager
async def serve_in_process(data: dict[str, Any], state_dir: Path) -> AsyncIterator[Harness]:
    """Run the orchestrator app for `data` (a models.yaml as a dict) until the
    block ends; then shut it down and check that no process is left."""
    previous = os.environ.get("MODELYARD_STATE_DIR")
    os.environ["MODELYARD_STATE_DIR"] = str(state_dir)  # read by Config.state_path()
    config_path = state_dir / "models.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    instance = "test-" + uuid.uuid4().hex[:12]
    declared = [g.model_dump() for g in config.settings.gpus] if config.settings.gpus else None
    app = create_app(config, instance, discover(declared), config_path)
    checker = InvariantChecker(app.scheduler, instance)
    app.scheduler.observers.append(checker)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    try:
        yield Harness(f"http://127.0.0.1:{port}", app.scheduler, checker, instance, session, config_path)
    finally:
        await session.close()
        server.should_exit = True
        await serving
        if previous is None:
            os.environ.pop("MODELYARD_STATE_DIR", None)
        else:
            os.environ["MODELYARD_STATE_DIR"] = previous
        leftover = live_processes(instance)
        described = []
        for proc in leftover:
            try:
                described.append(proc.cmdline())  # before kill(): a zombie has no command line
                proc.kill()
            except psutil.Error:
                pass
        assert not leftover, f"processes left behind: {described}"
