"""The orchestrator's ASGI application: the OpenAI endpoint (endpoint.py) in
front of a FastAPI app for everything else (models list, health, admin).

A proxied request flows: read body (size limit) -> parse and validate ->
resolve the model name -> scheduler lease (starts the service if needed) ->
proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.responses import JSONResponse

from core.config import Config
from core.engines import launch_spec
from core.http_errors import install_error_handlers
from orchestrator.admin import build_admin_router
from orchestrator.endpoint import ROUTES, OpenAIEndpoint
from orchestrator.proxy import Proxy
from orchestrator.registry import Registry
from orchestrator.scheduler import Scheduler


def create_app(config: Config, instance: str) -> OpenAIEndpoint:
    registry = Registry(config)
    scheduler = Scheduler(
        config, lambda model_id, model, port: launch_spec(model_id, model, port, config, instance)
    )
    proxy = Proxy(config.settings.upstream_timeout)

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

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the routes the OpenAI endpoint serves itself."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in ROUTES.items():
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                schema["paths"][path] = {
                    "post": {
                        "summary": f"OpenAI-compatible {path.removeprefix('/v1/')}",
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                        },
                        "responses": {"200": {"description": "the model's answer (JSON, or SSE when stream is true)"}},
                    }
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    body_limit = int(config.settings.max_request_mb * 1024 * 1024)
    return OpenAIEndpoint(app, registry, scheduler, proxy, body_limit)
