"""Sibling services: processes the orchestrator runs beside the models (the
drift monitor, models/drift/), started with it, restarted when they die or
stop answering, stopped when it stops. Unlike a model they hold no GPU, are
never evicted and start at once rather than on a first request: the drift
monitor must be up to take the request feed.

A sibling that cannot start (its environment is missing, it crashes at
start) does not stop the orchestrator: the models go on serving, requests to
the sibling's routes get a 503 saying why, and it is tried again with a
growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from core.errors import ServiceError
from core.logs import log_event
from core.process import LaunchSpec, ServiceProcess, StartupError, free_port

log = logging.getLogger("modelyard.siblings")

FIRST_RETRY = 1.0  # seconds before the first restart; doubled after each failure
LAST_RETRY = 60.0
STABLE = 60.0  # a run this long resets the delay: the next crash is a new story
PROBE_EVERY = 10.0  # seconds between health probes of a running sibling
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
UNHEALTHY_AFTER = 3  # failed probes in a row before it is restarted


class Sibling:
    """One sibling service, supervised. launch(port) gives its command line
    (ServiceError when it cannot be started at all)."""

    def __init__(self, name: str, launch: Callable[[int], LaunchSpec], startup_timeout: float,
                 shutdown_grace: float) -> None:
        self.name = name
        self.launch = launch
        self.startup_timeout = startup_timeout
        self.shutdown_grace = shutdown_grace
        self.url: str | None = None  # set while it is healthy
        self.problem = "it is starting"  # why it is not healthy, for the 503 (no log lines: clients see it)
        self.problem_code = f"{name}_unavailable"
        self.restarts = 0
        self.starting = True  # it will be up soon: requests wait for it rather than fail at once
        self._ready = asyncio.Event()
        self._process: ServiceProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"sibling-{self.name}")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def ready_url(self, wait: float) -> str:
        """Its base URL, waiting up to `wait` seconds for it to be healthy;
        503 naming the reason otherwise."""
        if self.url is None and self.starting and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        if self.url is None:
            raise ServiceError(503, f"the {self.name} service is not available: {self.problem}",
                               code=self.problem_code, retry_after=5)
        return self.url

    async def _supervise(self) -> None:
        delay = FIRST_RETRY
        async with aiohttp.ClientSession() as session:
            while not self._closing:
                began = time.monotonic()
                try:
                    await self._run_once(session)
                except ServiceError as exc:  # cannot start at all (no environment): say so, try now and then
                    self.problem, self.problem_code = exc.message, exc.code or self.problem_code
                    log_event(log, f"{self.name} service cannot start", logging.ERROR, reason=exc.message)
                    delay = LAST_RETRY
                except StartupError as exc:
                    self.problem = f"it failed to start (its log: logs/{self.name}.sibling.log)"
                    log_event(log, f"{self.name} service failed to start", logging.ERROR, reason=str(exc))
                except Exception:  # noqa: BLE001 - a bug of ours must not end the supervision
                    self.problem = "it failed to start (see the orchestrator's log)"
                    log.exception("starting the %s service failed", self.name)
                if self._closing:
                    return
                if time.monotonic() - began >= STABLE:
                    delay = FIRST_RETRY
                self.restarts += 1
                # Requests wait for a restart due soon; during a long back-off they get their 503 at once.
                self.starting = delay <= 2 * FIRST_RETRY
                log_event(log, f"{self.name} service will be restarted", logging.WARNING, in_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)

    async def _run_once(self, session: aiohttp.ClientSession) -> None:
        port = free_port()
        spec = self.launch(port)
        self.starting = True
        process = self._process = ServiceProcess(self.name, spec)
        process.start()
        url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        while True:
            try:
                await process.wait_healthy(url + "/health", self.startup_timeout, session)
                break
            except StartupError:
                # Answering 503 "loading" (replaying a large drift.db, say) is progress, not a hang:
                # startup_timeout bounds the time to its first answer, not the whole load.
                if process.returncode is None and await self._answers(url, session):
                    log_event(log, f"{self.name} service still loading", seconds=round(time.monotonic() - began))
                    continue
                await process.stop(self.shutdown_grace)
                raise
        seconds = time.monotonic() - began
        self.url = url
        self.starting = False
        self.problem_code = f"{self.name}_unavailable"
        self._ready.set()
        log_event(log, f"{self.name} service ready", port=port, pid=process.pid, seconds=round(seconds, 3))
        code = await self._watch(process, url, session)
        self.url = None
        self._ready.clear()
        if not self._closing:
            self.problem = f"it stopped ({code}) and is being restarted"
            log_event(log, f"{self.name} service stopped", logging.ERROR, reason=code,
                      last_lines=process.last_lines(4))

    @staticmethod
    async def _answers(url: str, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(url + "/health", timeout=PROBE_TIMEOUT) as answer:
                return answer.status in (200, 503)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _watch(self, process: ServiceProcess, url: str, session: aiohttp.ClientSession) -> str:
        """Until it exits, or stops answering its health probe (then it is stopped): why it ended."""
        failures = 0
        exited = asyncio.ensure_future(process.wait_exit())
        while True:
            await asyncio.wait([exited], timeout=PROBE_EVERY)
            if exited.done():
                return f"exit code {exited.result()}"
            try:
                async with session.get(url + "/health", timeout=PROBE_TIMEOUT) as answer:
                    failures = 0 if answer.status == 200 else failures + 1
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                failures += 1
            if failures >= UNHEALTHY_AFTER and not self._closing:
                log_event(log, f"{self.name} service stopped answering its health probe; restarting it",
                          logging.ERROR, probes=failures)
                await process.stop(self.shutdown_grace)
                return f"no answer to {failures} health probes"

    async def stop(self) -> None:
        self._closing = True
        self.starting = False
        self.url = None
        self.problem = "the orchestrator is shutting down"
        if self._process is not None and self._process.returncode is None:
            await self._process.stop(self.shutdown_grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
