"""The OpenAI endpoint: a plain ASGI handler for the three proxied POST routes,
in front of the FastAPI app that serves everything else.

Why not FastAPI routes: per request, FastAPI and Starlette's routing,
dependency solving and streaming response cost more CPU than the whole proxy
(profiled; scripts/bench.sh shows the figures). This handler does the same
job in a few steps: read the body under the size limit, validate it
(core/protocol.py), resolve the model, get a lease from the scheduler, and let
the proxy write the answer.

It also watches the client: when the connection closes before the answer is
complete, the request is cancelled, so a load wait is abandoned and the
upstream connection is closed (the service stops generating).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.middleware.cors import CORSMiddleware

from core.errors import ServiceError
from core.http_errors import describe_validation
from core.protocol import (
    AudioGenerationRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    PredictRequest,
    parse_keep_alive,
)
from orchestrator.accounting import Ledger
from orchestrator.auth import Authenticator, Principal
from orchestrator.drift_feed import DriftFeed, prompt_text, request_features
from orchestrator.experiments.controller import Assignment, Experiments
from orchestrator.files import SignedFiles, base_url
from orchestrator.idempotency import REPLAYED, Capture, IdempotencyStore, fingerprint, key_of, send_answer
from orchestrator.limits import Limiter
from orchestrator.metrics import RequestMetrics
from orchestrator.progress import AfterHeaders, acquire_with_progress
from orchestrator.proxy import Proxy, send_json
from orchestrator.recent_requests import RecentRequests
from orchestrator.registry import Registry, Target
from orchestrator.request_log import CLIENT_GONE, RequestLog
from orchestrator.routing.router import HOP_HEADER, Routed, Router
from orchestrator.scheduler import Lease, Scheduler, State
from orchestrator.tracing import Tracing
from orchestrator.ui_session import is_dashboard_page, login_url, send_redirect
from orchestrator.usage import STREAM_ROUTES, StreamUsage, ask_for_stream_usage, prompt_estimate

ROUTES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/images/generations": ImageGenerationRequest,
    "/v1/audio/generations": AudioGenerationRequest,
    "/v1/predict": PredictRequest,
}
# Routes whose answers may name generated files, to be signed on the way out.
FILE_ROUTES = frozenset({"/v1/images/generations", "/v1/audio/generations"})

ASGIApp = Any
log = logging.getLogger("modelyard.endpoint")


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


def parse_request(body: bytes, schema: type[BaseModel]) -> dict[str, Any]:
    """JSON object validated against the route's schema; 400 naming the field."""
    if not body:
        raise ServiceError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ServiceError(400, "request body must be a JSON object", code="invalid_json")
    try:
        schema.model_validate(payload)
    except ValidationError as exc:
        message, param = describe_validation(list(exc.errors()))
        raise ServiceError(400, message, code="invalid_request", param=param) from None
    return payload


async def read_body(receive: Any, declared: int | None, limit: int) -> bytes:
    """The request body, refusing anything over limit bytes with 413."""
    if declared is not None and declared > limit:
        raise ServiceError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _usable_request_id(value: bytes) -> bool:
    """Client-supplied ids are echoed and logged: printable ASCII, 1-200 bytes."""
    return 0 < len(value) <= 200 and all(32 < b < 127 for b in value)


def request_id_of(scope: dict[str, Any]) -> bytes:
    """The client's X-Request-ID when usable, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _usable_request_id(value):
            return value
    return os.urandom(16).hex().encode()


@dataclass
class Maintenance:
    """While on, the model routes answer 503 `maintenance`; admin and the rest work."""

    enabled: bool = False
    message: str = ""
    since: float | None = None

    def reason(self) -> str:
        return "modelyard is in maintenance" + (f": {self.message}" if self.message else "") + "; retry later"


class OpenAIEndpoint:
    def __init__(
        self, app: ASGIApp, registry: Registry, scheduler: Scheduler, proxy: Proxy, body_limit: int
    ) -> None:
        self.app = app
        self.registry = registry
        self.scheduler = scheduler
        self.proxy = proxy
        self.body_limit = body_limit
        self.reload: Any = None  # app.py's reload(drain): re-read models.yaml
        self.files: SignedFiles | None = None  # signs generated files' URLs in answers
        self.auth: Authenticator | None = None  # API keys and what they may do; None: everyone may
        self.limiter = Limiter(None)  # rate limits and quotas (app.py gives it keys.db for quotas)
        self.idempotency: IdempotencyStore | None = None  # Idempotency-Key answers (app.py)
        self.maintenance = Maintenance()
        self._entry: ASGIApp = self._dispatch  # add_cors puts CORS in front
        self._finishing: set[asyncio.Task[None]] = set()  # idempotent answers being kept
        self.request_metrics: RequestMetrics | None = None  # app.py's
        self.ledger: Ledger | None = None  # usage and cost per key and model (app.py's)
        self.request_log = RequestLog(None, None, False)  # audit entries and captured bodies (app.py's)
        self.tracing = Tracing(None)  # OpenTelemetry spans (app.py's; off by default)
        self.drift_feed: DriftFeed | None = None  # request features for the drift monitor (app.py's, when on)
        self.router: Router | None = None  # replicas of models (app.py's; routing/router.py)
        self.recent = RecentRequests()  # the last requests, for the dashboard and GET /admin/requests
        self.experiments: Experiments | None = None  # A/B tests and rollouts on aliases (app.py's)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._entry(scope, receive, send)

    def add_cors(self, origins: list[str]) -> None:
        """Let browsers on these origins call every route (Starlette's CORS
        middleware, in front of everything: preflights need no credential)."""
        self._entry = CORSMiddleware(
            self._dispatch, allow_origins=origins, allow_methods=["*"], allow_headers=["*"], max_age=600,
            expose_headers=["x-request-id", "retry-after", "idempotent-replayed", "x-modelyard-overhead-ms",
                            "x-modelyard-load-ms"],
        )

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ROUTES:
            if scope["method"] == "POST":
                await self.handle(scope, receive, send)
            else:
                error = ServiceError(405, f"{scope['path']} accepts POST only", code="method_not_allowed")
                await send_json(send, 405, error.body(), [(b"allow", b"POST"), (b"x-request-id", request_id_of(scope))])
            return
        if scope["type"] == "websocket" and self.auth is not None:
            await send({"type": "websocket.close", "code": 1008})  # no websocket route exists; none passes unchecked
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        method, path = scope["method"], scope["path"]
        audited = self.request_log.audits_admin(method, path)
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        principal: Principal | None = None
        if self.auth is not None:
            try:
                principal = self.auth.admit(method, path, scope["headers"])
            except ServiceError as exc:
                if exc.status == 401 and is_dashboard_page(method, path):  # a person, not a program: sign in
                    await send_redirect(send, login_url(path, scope.get("query_string", b"")), request_id)
                    return
                await self._error(send, exc, request_id)
                if path.startswith(("/admin/", "/drift/", "/simulator/")):  # a refused attempt is worth knowing about
                    refused = getattr(exc, "principal", None)  # a valid credential without the scope: who
                    self.request_log.admin_request(method, path, request_id, refused, exc.status, {"code": exc.code})
                return
            scope.setdefault("state", {})["principal"] = principal  # request.state.principal
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if audited:  # routes may leave details for the entry in request.state.audit_detail
                detail = scope.get("state", {}).get("audit_detail")
                self.request_log.admin_request(method, path, request_id, principal, status, detail)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        began = time.perf_counter()
        request_id = request_id_of(scope)
        # What _handle learns on the way (who asks, which model, the body), for metrics, audit and capture.
        seen: dict[str, Any] = {"status": 0, "first_byte": None, "model": "", "principal": None, "body": None,
                                "gone": False}
        tap = self.request_log.tap(send)

        async def observed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and seen["first_byte"] is None and message.get("body"):
                seen["first_byte"] = time.perf_counter() - began
            await tap(message)

        try:
            with self.tracing.request("POST", scope["path"], scope["headers"], request_id) as span:
                try:
                    await self._handle(scope, receive, observed, began, seen, request_id)
                finally:
                    self.tracing.finish(span, CLIENT_GONE if seen["gone"] else seen["status"], seen["model"])
        finally:
            route = scope["path"]
            if seen["status"] and self.request_metrics is not None:  # a client that left before an answer: none
                self.request_metrics.finished(seen["model"], route, seen["status"], time.perf_counter() - began,
                                              seen["first_byte"])
            if seen["status"] or seen["body"] is not None or seen["gone"]:
                status = CLIENT_GONE if seen["gone"] else seen["status"]  # left before the end: 499, as nginx logs
                self.request_log.model_request(route, request_id, seen["principal"], seen["model"], status,
                                               seen["body"], tap)
                if self.drift_feed is not None and seen["model"]:
                    self._feed_drift(route, status, time.perf_counter() - began, seen)
                if seen["model"]:
                    principal = seen["principal"]
                    error = "client_gone" if status == CLIENT_GONE else seen.get("error")
                    self.recent.add(request_id, route, seen["model"], status, time.perf_counter() - began,
                                    seen["first_byte"], seen.get("usage"),
                                    principal.name if principal is not None else None, error)
                    if self.experiments is not None:
                        self._count_for_experiment(request_id, status, time.perf_counter() - began, seen)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, began: float,
                      seen: dict[str, Any], request_id: bytes) -> None:
        route = scope["path"]
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)

        try:
            if self.maintenance.enabled:
                raise ServiceError(503, self.maintenance.reason(), code="maintenance", retry_after=60)
            # The credential first: a body from someone without one is not worth reading.
            with self.tracing.step("auth", request_id):
                principal = seen["principal"] = (self.auth.admit("POST", route, scope["headers"])
                                                 if self.auth is not None else None)
            body = seen["body"] = await read_body(receive, declared, self.body_limit)
        except ServiceError as exc:
            seen["principal"] = seen["principal"] or getattr(exc, "principal", None)  # refused for its scope: who
            await self._error(send, exc, request_id)
            return
        except ClientGone:
            seen["gone"] = True
            return

        # From here on the client's side of the connection only says one more
        # thing: that it went away. Then this request is cancelled.
        task = asyncio.current_task()
        assert task is not None
        state = {"gone": False, "done": False, "keep": False}

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"] and not state["keep"]:
                state["gone"] = True
                task.cancel()

        lease: Lease | None = None
        answered = False  # an error answer began (the proxy marks its own on the lease)
        idempotent: tuple[str, str, str] | None = None  # (owner, key, fingerprint) while this request runs for them
        capture: Capture | None = None

        watcher = asyncio.create_task(watch_client())
        try:
            try:
                payload = parse_request(body, ROUTES[route])
                if self.drift_feed is not None:
                    seen["stream"] = payload.get("stream") is True
                    if self.drift_feed.embed is not None and route in STREAM_ROUTES:
                        seen["prompt"] = prompt_text(payload)
                idempotency_key = key_of(scope["headers"]) if self.idempotency is not None else None
                if idempotency_key is not None and payload.get("stream") is True:
                    raise ServiceError(400, "Idempotency-Key is not supported with stream: true",
                                       code="idempotency_unsupported", param="stream")
                with self.tracing.step("route", request_id):
                    if principal is not None:  # before resolving: a limited key learns nothing of other models
                        self._require_model(principal, payload["model"])
                    target, seen["assignment"] = self._resolve(payload, route, principal)
                seen["model"] = target.model_id
                if idempotency_key is not None and self.idempotency is not None:
                    owner = (principal.quota_id or principal.key_id or "") if principal is not None else ""
                    claim = (owner, idempotency_key, fingerprint(payload))
                    stored = await self.idempotency.begin(*claim)
                    if stored is not None:  # a replay: the model does not run, no quota or rate is spent
                        answered = True
                        seen["assignment"] = None  # nor does an experiment count it again
                        headers = [*stored.headers, REPLAYED, (b"x-request-id", request_id)]
                        await send_answer(send, stored, self._answer_transform(scope), headers)
                        return
                    idempotent = claim
                    state["keep"] = True  # run to the end even if the client leaves: its retry gets the answer
                    send = capture = Capture(send, self._answer_transform(scope))
                self.limiter.admit(principal, target.model_id, target.model.rpm, target.model.tpm)
                keep_alive = payload.pop("keep_alive", None)
                # Every stream asks for its usage event (tokens are counted from it); one the client did
                # not ask for is dropped on the way back.
                meter = None
                if payload.get("stream") is True and route in STREAM_ROUTES:
                    meter = StreamUsage(ask_for_stream_usage(payload), prompt_estimate(payload))
                if payload["model"] != target.upstream or keep_alive is not None or meter is not None:
                    payload["model"] = target.upstream
                    body = orjson.dumps(payload)
                seconds = None if keep_alive is None else parse_keep_alive(keep_alive)
                replicas = self.router.replicas_of(target.model_id) if self.router and target.adapter is None else None
                # Another appliance's router sent it here: serve it ourselves (on any local replica), never
                # send it on (appliances that list each other as peers would pass it back and forth).
                from_peer = replicas is not None and forwarded(scope["headers"])
                if replicas is not None and from_peer:
                    if not replicas.config.local:
                        raise ServiceError(508, f"model '{target.model_id}' is served here only by peers (local: "
                                           "false), and this request came from a peer", code="loop_detected")
                    if replicas.config.local_count == 1:
                        replicas = None
                if replicas is not None:  # models.yaml `replicas:`: the router picks where it runs
                    assert self.router is not None
                    routed = Routed()
                    try:
                        with self.tracing.step("upstream", request_id, target.model_id):
                            await self.router.forward(
                                replicas, routed, route=route, payload=payload, upstream_name=target.upstream,
                                request_id=request_id, began=began, send=send,
                                transform=None if capture is not None else self._answer_transform(scope),
                                meter=meter,
                                acquire_local=lambda service_id: self._acquire(target, seconds, service_id),
                                key=hash_key(replicas.config.hash_on, payload, principal), local_only=from_peer)
                    finally:
                        lease = routed.lease  # the answer the client got: for accounting and cancellation
                    return
                if payload.get("stream") is True and self._progress_for(target.model_id):
                    answered = True  # our 200 goes out now; what follows arrives as events
                    with self.tracing.step("model.acquire", request_id, target.model_id):
                        lease = await acquire_with_progress(
                            lambda: self._acquire(target, seconds), target.model_id, send, request_id
                        )
                    if lease is not None:
                        with self.tracing.step("upstream", request_id, target.model_id):
                            await self.proxy.forward(lease, route, body, request_id, began, AfterHeaders(send),
                                                     meter=meter)
                    return
                with self.tracing.step("model.acquire", request_id, target.model_id):
                    lease = await self._acquire(target, seconds)
            except ServiceError as exc:
                answered = True
                seen["error"] = exc.code
                await self._error(send, exc, request_id)
                return
            transform = None if capture is not None else self._answer_transform(scope)  # the capture transforms
            with self.tracing.step("upstream", request_id, target.model_id):
                await self.proxy.forward(lease, route, body, request_id, began, send, transform, meter)
        except asyncio.CancelledError:
            if state["gone"]:
                seen["gone"] = True
                task.uncancel()  # cancelled by watch_client: the client left; nothing to answer
                return
            if answered or (lease is not None and lease.responded):
                raise
            # The server is shutting down and gave up waiting for us: say so
            # rather than let it answer 500.
            task.uncancel()
            error = ServiceError(503, "the orchestrator is shutting down", code="shutting_down", retry_after=5)
            seen["error"] = error.code
            await self._error(send, error, request_id)
        except Exception:
            # A bug of ours: log it, and answer like every other error if we still can.
            log.exception("request %s failed", request_id.decode())
            if not (answered or (lease is not None and lease.responded)):
                error = ServiceError(500, "internal error in the orchestrator", code="internal_error")
                await self._error(send, error, request_id)
        finally:
            state["done"] = True
            watcher.cancel()
            seen["broken"] = lease is not None and getattr(lease, "broken", False)
            seen["waited"] = getattr(lease, "waited", 0.0) if lease is not None else 0.0
            if lease is not None and lease.usage is not None:
                seen["usage"] = lease.usage
                self._account(principal, target, lease)
            if idempotent is not None and self.idempotency is not None:
                # Only what the model's service answered is kept; the gateway's refusals depend on the moment.
                answer = capture.answer() if capture is not None and lease is not None and lease.responded else None
                ttl = self.scheduler.settings.file_ttl if route in FILE_ROUTES else None  # URLs expire then
                finishing = asyncio.create_task(self.idempotency.finish(*idempotent, answer, ttl))
                self._finishing.add(finishing)
                finishing.add_done_callback(self._finishing.discard)

    def _feed_drift(self, route: str, status: int, latency: float, seen: dict[str, Any]) -> None:
        """The request's features to the drift feed (a deque append). Never fails the request."""
        assert self.drift_feed is not None
        try:
            principal: Principal | None = seen["principal"]
            error = "client_gone" if status == CLIENT_GONE else seen.get("error")
            features = request_features(route, seen["model"], status, error, latency, seen["first_byte"],
                                        seen.get("stream", False), principal.key_id if principal else None,
                                        principal.tenant if principal else None, seen.get("usage"))
            self.drift_feed.record(seen["model"], features, seen.get("prompt"))
        except Exception:  # noqa: BLE001 - drift is an observer: it must not break a request
            log.exception("feeding a request to the drift monitor failed")

    def _count_for_experiment(self, request_id: bytes, status: int, latency: float, seen: dict[str, Any]) -> None:
        """The request's outcome to its experiment, if it was in one (a stream that broke off counts as
        failed), and its id kept for feedback. The latency counted leaves out the wait for the service
        (a load, a queue): that is the scheduler's doing, not the version's. Never fails the request."""
        assert self.experiments is not None
        try:
            principal: Principal | None = seen["principal"]
            usage = seen.get("usage")
            self.experiments.finished(seen.get("assignment"), request_id.decode(),
                                      principal.key_id if principal is not None else None, seen["model"],
                                      502 if seen.get("broken") else status,
                                      max(0.0, latency - seen.get("waited", 0.0)),
                                      usage.completion_tokens if usage is not None else None)
        except Exception:  # noqa: BLE001 - an observer: it must not break a request
            log.exception("counting a request for its experiment failed")

    def _account(self, principal: Principal | None, target: Target, lease: Lease) -> None:
        """Count what a successful answer used: against the token limits, in
        the ledger (usage and cost) and in the metrics. Never fails the request."""
        usage = lease.usage
        assert usage is not None
        try:
            usage.gpu_seconds = (time.monotonic() - lease.granted) * lease.service.gpus
            self.limiter.spend_tokens(principal, target.model_id, target.model.tpm, usage.tokens)
            cost = 0.0
            if self.ledger is not None:
                key_id = principal.key_id if principal is not None else None
                cost = self.ledger.record(key_id, target.model_id, usage, target.model.prices)
            if self.request_metrics is not None:
                self.request_metrics.used(target.model_id, usage, cost)
        except Exception:  # noqa: BLE001 - accounting must not turn an answer into an error
            log.exception("counting the usage of a request to %s failed", target.model_id)

    async def _acquire(self, target: Target, keep_alive: float | None, service_id: str | None = None) -> Lease:
        """A lease on the target's service (or on service_id, one of its local replicas), with the
        target's adapter loaded in it."""
        lease = await self.scheduler.acquire(service_id or target.model_id, keep_alive)
        if target.adapter is not None and self.registry.adapters is not None:
            try:
                await self.registry.adapters.ensure_loaded(lease.service, target.adapter)
            except BaseException:
                lease.release()
                raise
        return lease

    def _require_model(self, principal: Principal, name: str) -> None:
        """403 unless the principal may use the model (or adapter) called name."""
        adapter = self.registry.adapters.get(name) if self.registry.adapters is not None else None
        if adapter is None and principal.models is not None and self.registry.registered_base(name) in principal.models:
            return  # a listed registered model covers its versions and aliases
        model_id = adapter.base if adapter is not None else self.registry.model_of(name)
        principal.require_model(name, model_id, adapter.name if adapter is not None else None,
                                self.registry.canonical)

    def _resolve(self, payload: dict[str, Any], route: str,
                 principal: Principal | None) -> tuple[Target, Assignment | None]:
        """The target of the requested model; when an A/B test or rollout sits on the alias it names,
        the version that experiment picks (sticky per `user`), with the assignment to count it under."""
        name = payload["model"]
        if self.experiments is None or not self.registry.is_registered_name(name):
            return self.registry.resolve(name, route), None
        user = payload.get("user") if isinstance(payload.get("user"), str) else None
        assignment = self.experiments.steer(name, user)
        if assignment is not None:
            try:
                if principal is not None and principal.models is not None:
                    # A key that may not use every version taking part stays out of the experiment
                    # (counted on one side only, it would bias the comparison).
                    for version in assignment.experiment.versions():
                        self._require_model(principal, f"{assignment.experiment.name}:{version}")
                return self.registry.resolve(assignment.reference, route), assignment
            except ServiceError:
                pass  # nor does a request the variant cannot serve (its model left models.yaml, another type)
        return self.registry.resolve(name, route), None

    def _answer_transform(self, scope: dict[str, Any]) -> Callable[[bytes], bytes] | None:
        """For answers that may name generated files: sign their URLs."""
        if scope["path"] not in FILE_ROUTES or self.files is None:
            return None
        files, base = self.files, base_url(scope, self.scheduler.settings.public_url)
        return lambda body: files.sign_answer(body, base)

    def _progress_for(self, model_id: str) -> bool:
        """Whether a streamed request for model_id gets load progress events:
        settings.load_progress is on and the model is not ready to answer."""
        if not self.scheduler.settings.load_progress:
            return False
        service = self.scheduler.services.get(model_id)
        return service is not None and service.state is not State.READY

    async def _error(self, send: Any, exc: ServiceError, request_id: bytes) -> None:
        if self.request_metrics is not None:
            self.request_metrics.refusal(exc.status, exc.code)
        headers = [(b"x-request-id", request_id), *((k.lower().encode(), v.encode()) for k, v in exc.headers().items())]
        await send_json(send, exc.status, exc.body(), headers)


def hash_key(hash_on: str, payload: dict[str, Any], principal: Principal | None) -> str | None:
    """What consistent hashing keeps together: the request's `user` (OpenAI's end-user id), else the key."""
    user = payload.get("user")
    if hash_on == "user" and isinstance(user, str) and user:
        return "user:" + user
    return ("key:" + principal.key_id) if principal is not None and principal.key_id else None


def forwarded(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a peer appliance's router forwarded this request (routing/router.py PeerLease)."""
    name = HOP_HEADER.encode()
    return any(key == name for key, _ in headers)
