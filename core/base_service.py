"""BaseService: what every spawnable service written in this project shares.

A subclass loads its model in load() and adds its routes in add_routes(). This
class gives it: a FastAPI app, GET /health (503 while loading, 200 once ready),
OpenAI-shaped errors without tracebacks, structured JSON logs, graceful SIGTERM
shutdown, and a watchdog that exits when the parent orchestrator dies so no
orphan keeps holding memory.

    class EchoService(BaseService):
        name = "echo"
        def load(self) -> None: ...
        def add_routes(self, app: FastAPI) -> None: ...

    if __name__ == "__main__":
        EchoService.main()

The orchestrator starts it as `python server.py --port P --model-path DIR
--model-id ID [--engine-arg value ...]`; engine arguments come from models.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.errors import ServiceError, error_body
from core.http_errors import install_error_handlers
from core.logs import configure_logging, log_event

log = logging.getLogger("modelyard.service")

T = TypeVar("T")
# How often a request waiting for its turn (run_in_turn) checks that its client is still there.
TURN_POLL_SECONDS = 0.5

# Exit code of a service whose load() failed: the orchestrator reports it as a
# load error together with the tail of the service's log.
EXIT_LOAD_FAILED = 3


def sse_response(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events in OpenAI's framing: `data: {json}` ... `data: [DONE]`.

    An exception inside the stream ends it with an error event rather than a
    silently truncated body.
    """

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
        except ServiceError as exc:
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
            log.exception("stream failed")
            body = error_body(500, f"stream failed: {type(exc).__name__}", "stream_error")
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class BaseService:
    """Subclass me: set `name`, override load() and add_routes()."""

    name = "service"
    # Set True and override sleep() and wake() to offer the sleep tier:
    # POST /sleep and POST /wake (the orchestrator calls them; models.yaml `sleep`).
    can_sleep = False

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.ready = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.monotonic()
        self._active = 0  # HTTP requests in progress, /health aside
        self.asleep = False
        self._turn: asyncio.Lock | None = None  # run_in_turn's; made on the event loop
        self.app = FastAPI(title=f"modelyard {self.name}", lifespan=self._lifespan)
        install_error_handlers(self.app, self.name)
        self.app.add_api_route("/health", self._health, methods=["GET"])
        if self.can_sleep:
            self.app.add_api_route("/sleep", self._sleep, methods=["POST"])
            self.app.add_api_route("/wake", self._wake, methods=["POST"])
        self.add_routes(self.app)

    # --- for subclasses -------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare engine arguments (models.yaml `args` arrive as --key value)."""

    def load(self) -> None:
        """Load the model. Blocking; runs in a thread while /health says 503."""

    def sleep(self) -> None:
        """Free the GPU: move the weights to host memory. Blocking; in a thread."""

    def wake(self) -> None:
        """Bring the weights back where they were. Blocking; in a thread."""

    def add_routes(self, app: FastAPI) -> None:
        """Register the service's OpenAI routes on app."""

    async def run_in_turn(self, request: Request, work: Callable[[], T]) -> T:
        """Run blocking work in a thread, one call at a time in this service (a
        generation uses the whole device). A request waiting for its turn holds
        no thread and is dropped once its client has gone; a turn that began
        lasts until its thread is done, even if its request is cancelled, so
        two generations never overlap."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        turn = self._turn
        while True:
            try:
                await asyncio.wait_for(turn.acquire(), timeout=TURN_POLL_SECONDS)
                break
            except TimeoutError:
                if await request.is_disconnected():
                    raise ServiceError(503, "the client went away while waiting for its turn", "client_gone") from None

        def done(job: asyncio.Future[T]) -> None:
            turn.release()
            if not job.cancelled():
                job.exception()  # retrieved: an abandoned request's failure is not "never retrieved"

        job = asyncio.ensure_future(asyncio.to_thread(work))
        job.add_done_callback(done)
        return await asyncio.shield(job)

    def _require_ready(self) -> None:
        """For routes: a 503 until the model is loaded."""
        if not self.ready:
            raise ServiceError(503, "model is still loading", "model_loading", retry_after=1)

    def health_details(self) -> dict[str, Any]:
        """Extra fields for the /health body."""
        return {}

    # --- lifecycle --------------------------------------------------------

    async def _sleep(self) -> dict[str, Any]:
        if self.ready and not self.asleep:
            self.asleep = True  # first: no request may use the weights while they move
            began = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, self.sleep)
            log_event(log, "asleep", seconds=round(time.monotonic() - began, 3))
        return {"asleep": self.asleep}

    async def _wake(self) -> dict[str, Any]:
        if self.asleep:
            began = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, self.wake)
            self.asleep = False
            log_event(log, "awake", seconds=round(time.monotonic() - began, 3))
        return {"asleep": self.asleep}

    async def _health(self) -> JSONResponse:
        body = {"status": "ok" if self.ready else "loading", "service": self.name, **self.health_details()}
        return JSONResponse(body, status_code=200 if self.ready else 503)

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        # Kept for subclasses: load() and generation threads hand work back through it.
        self.loop = asyncio.get_running_loop()
        loader = self.loop.run_in_executor(None, self._load_or_exit)
        yield
        if not loader.done():
            loader.cancel()

    def _load_or_exit(self) -> None:
        began = time.monotonic()
        try:
            self.load()
        except BaseException as exc:  # noqa: BLE001 - any failure to load ends the process
            log_event(log, f"load failed: {type(exc).__name__}: {exc}", logging.ERROR)
            # The orchestrator reads this line from our log and puts it in the load error.
            print(f"modelyard: load failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            os._exit(EXIT_LOAD_FAILED)
        self.ready = True
        log_event(log, "ready", load_seconds=round(time.monotonic() - began, 3))

    @classmethod
    def parse_options(cls, argv: list[str] | None = None) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog=f"modelyard-{cls.name}")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")) or None, required="PORT" not in os.environ)
        parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH"))
        parser.add_argument("--model-id", default=os.environ.get("MODEL_ID", cls.name))
        parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        parser.add_argument("--shutdown-grace", type=float, default=10.0)
        cls.add_arguments(parser)
        return parser.parse_args(argv)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        options = cls.parse_options(argv)
        configure_logging(cls.name, options.log_level)
        service = cls(options)
        watch_parent(options.shutdown_grace)
        log_event(log, "starting", port=options.port, model_id=options.model_id, pid=os.getpid())
        config = uvicorn.Config(
            service._counted,
            host=options.host,
            port=options.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(options.shutdown_grace) or None,
            lifespan="on",
            interface="asgi3",  # a bound method: uvicorn's guess would be ASGI 2
        )
        _Server(config, lambda: service._active > 0).run()

    async def _counted(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The app, counting the requests in progress (health checks aside)."""
        if scope["type"] != "http" or scope["path"] in ("/health", "/sleep", "/wake"):
            await self.app(scope, receive, send)
            return
        if self.asleep and scope["method"] == "POST":  # the orchestrator wakes a service before it sends work
            body = json.dumps(error_body(503, f"{self.name} is asleep; POST /wake first", "asleep")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        self._active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._active -= 1


class _Server(uvicorn.Server):
    """uvicorn's server, but an idle service exits at once on SIGTERM: there is
    nothing to finish, and the orchestrator is waiting for its memory (an
    eviction's cost is mostly this wait). With requests in progress, the usual
    graceful shutdown lets them finish."""

    def __init__(self, config: uvicorn.Config, busy: Any) -> None:
        super().__init__(config)
        self.busy = busy

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and not self.busy():
            log_event(log, "stopping: idle, so at once")
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(0)
        super().handle_exit(sig, frame)


def watch_parent(grace: float) -> None:
    """Exit when the process that started us is gone.

    The orchestrator also asks the kernel for SIGTERM on its death
    (PR_SET_PDEATHSIG); this thread covers launchers where that does not reach
    us, and a restart of the orchestrator reaps anything left.
    """
    # Our actual parent: the orchestrator, or a launcher it started us through
    # (which itself dies with the orchestrator).
    expected = os.getppid()

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(0.5)
        log_event(log, "parent process is gone; shutting down", logging.WARNING, parent=expected)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace + 2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
