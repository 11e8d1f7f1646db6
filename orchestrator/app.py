"""The orchestrator's FastAPI app: one OpenAI-compatible endpoint.

A request flows: read body (size limit) -> parse and validate -> resolve the
model name -> scheduler lease (starts the service if needed) -> proxy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from core.config import Config
from core.engines import launch_spec
from core.errors import ServiceError
from core.http_errors import describe_validation, install_error_handlers
from core.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from orchestrator.admin import build_admin_router
from orchestrator.proxy import Proxy
from orchestrator.registry import Registry
from orchestrator.scheduler import Scheduler

ROUTES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over limit bytes with 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body is {int(declared)} bytes; the limit is {limit}", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


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


def create_app(config: Config, instance: str) -> FastAPI:
    registry = Registry(config)
    scheduler = Scheduler(
        config, lambda model_id, model, port: launch_spec(model_id, model, port, config, instance)
    )
    proxy = Proxy(config.settings.upstream_timeout)
    body_limit = int(config.settings.max_request_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        await proxy.start()
        app.state.ready = True
        yield
        app.state.ready = False
        await scheduler.shutdown()
        await proxy.close()

    app = FastAPI(title="modelyard", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    app.state.scheduler = scheduler
    app.state.ready = False
    install_error_handlers(app, "orchestrator")
    app.include_router(build_admin_router())

    async def openai_route(request: Request) -> Response:
        began = time.perf_counter()
        route = request.scope["path"]
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            body = await read_body(request, body_limit)
            payload = parse_request(body, ROUTES[route])
            model_id, model = registry.resolve(payload["model"], route)
            upstream_name = model.served_name or model_id
            if payload["model"] != upstream_name:
                payload["model"] = upstream_name
                body = orjson.dumps(payload)
            lease = await scheduler.acquire(model_id)
        except ServiceError as exc:
            return JSONResponse(exc.body(), exc.status, headers={**exc.headers(), "x-request-id": request_id})
        return await proxy.forward(lease, route, body, request_id, began)

    for path, schema in ROUTES.items():
        app.add_api_route(
            path,
            openai_route,
            methods=["POST"],
            summary=f"OpenAI-compatible {path.removeprefix('/v1/')}",
            description=f"Body: {schema.__name__} (OpenAI wire format); forwarded to the model's service.",
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = []
        for model_id, model in config.models.items():
            service = scheduler.services[model_id]
            data.append(
                {
                    "id": model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "modelyard",
                    "type": model.type,
                    "aliases": model.aliases,
                    "state": service.state.value,
                }
            )
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: started and not shutting down."""
        ok = bool(app.state.ready) and not scheduler.closing
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    return app
