"""The orchestrator's ASGI application: the OpenAI endpoint (endpoint.py) in
front of a FastAPI app for everything else (models list, health, admin).

A proxied request flows: read body (size limit) -> parse and validate ->
resolve the model name -> scheduler lease (starts the service if needed) ->
proxy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import JSONResponse, Response

from core.config import Config, ConfigError, load_config
from core.engines import FEED_TOKEN_ENV, ORCHESTRATOR_URL_ENV, SIMULATOR_TOKEN_ENV, launch_spec, sibling_launch_spec
from core.errors import ServiceError
from core.gpu import Inventory
from core.http_errors import install_error_handlers
from core.logs import log_event
from orchestrator.accounting import Ledger
from orchestrator.adapters import Adapters
from orchestrator.admin import build_admin_router
from orchestrator.audit import AuditLog
from orchestrator.audit_api import build_audit_router
from orchestrator.auth import Authenticator, Principal
from orchestrator.capture import CaptureStore, keyring_of
from orchestrator.capture_api import build_capture_router
from orchestrator.drift_api import build_drift_router
from orchestrator.drift_feed import DriftFeed, Embedder, FeedMetrics
from orchestrator.endpoint import ROUTES, OpenAIEndpoint
from orchestrator.experiments.controller import Experiments, ExperimentsCollector
from orchestrator.experiments.store import ExperimentStore
from orchestrator.experiments_api import build_experiments_router
from orchestrator.files import SignedFiles, build_files_router, load_or_create_key
from orchestrator.footprints import Footprints
from orchestrator.idempotency import IdempotencyStore
from orchestrator.jwt_auth import JwtVerifier
from orchestrator.keys import KeyStore
from orchestrator.keys_api import build_keys_router
from orchestrator.limits import Limiter, Quotas
from orchestrator.metrics import RequestMetrics, SchedulerCollector, SchedulerMetrics
from orchestrator.proxy import Proxy
from orchestrator.registry import Registry
from orchestrator.request_log import RequestLog
from orchestrator.routing.router import Router
from orchestrator.scheduler import Scheduler
from orchestrator.service import State
from orchestrator.siblings import Sibling
from orchestrator.simulator_api import build_simulator_router, orchestrator_url, simulator_principal
from orchestrator.tracing import Tracing
from orchestrator.ui import build_ui_router, static_files
from orchestrator.ui_session import UiSessions
from orchestrator.usage_api import build_usage_router
from orchestrator.versions import VersionStore
from orchestrator.versions_api import build_versions_router

log = logging.getLogger("modelyard.orchestrator")


# Settings that only a restart can change: reload keeps their old values.
RESTART_SETTINGS = ("host", "port", "gpus", "upstream_timeout", "log_level", "auth", "cors_origins",
                    "idempotency_ttl", "tracing", "drift", "simulator")
# settings.capture: its keys and limits apply on reload (key rotation needs no restart); turning it on or off does not.


def create_app(
    config: Config,
    instance: str,
    inventory: Inventory | None = None,
    config_path: str | os.PathLike[str] | None = None,
    listen: tuple[str, int] | None = None,
) -> OpenAIEndpoint:
    """listen: the host and port served (the command line's, when it overrides settings)."""
    adapters = Adapters(config, config.state_path() / "adapters.db")
    files = SignedFiles(
        config.state_path() / "files", load_or_create_key(config.state_path() / "files.key"), config.settings.file_ttl
    )
    versions = VersionStore(config.state_path() / "registry.db")  # model versions and aliases
    registry = Registry(config, adapters, versions)
    keys = KeyStore(config.state_path() / "keys.db")
    quotas = Quotas(keys.db)
    ledger = Ledger(config.state_path() / "usage.db")
    audit = AuditLog(config.state_path() / "audit.db")
    # A/B tests and canary rollouts on registered models' aliases (orchestrator/experiments/)
    experiments = Experiments(ExperimentStore(config.state_path() / "experiments.db"), versions, audit)
    captures = open_captures(config)
    idempotency = IdempotencyStore(config.state_path() / "idempotency.db", config.settings.idempotency_ttl)
    if config.settings.auth.enabled and not any(k.role == "admin" and k.state() == "active" for k in keys.all()):
        log_event(log, "auth is on and no active admin key exists; make one with: python -m orchestrator.keys_cli "
                  "create --name NAME --role admin", logging.WARNING)
    footprints = Footprints(config.state_path() / "orchestrator.db")
    metrics_registry = CollectorRegistry()
    scheduler = Scheduler(
        config,
        # scheduler.config: the configuration of now, after any reload
        lambda model_id, model, port, gpus, service_id: launch_spec(model_id, model, port, scheduler.config,
                                                                     instance, gpus, service_id),
        inventory,
        footprints,
        SchedulerMetrics(metrics_registry),
    )
    metrics_registry.register(SchedulerCollector(scheduler))
    metrics_registry.register(ExperimentsCollector(experiments))
    tracing = Tracing(config.settings.tracing)
    proxy = Proxy(config.settings.upstream_timeout, tracing)
    router = Router.of(config, proxy, scheduler)  # models.yaml `replicas:` (orchestrator/routing/)
    drift, feed = drift_monitor(config, instance, registry, scheduler, proxy, metrics_registry)
    simulator, simulator_token = simulator_service(config, instance, scheduler, config_path,
                                                   listen or (config.settings.host, config.settings.port))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        await proxy.start()
        await router.start()
        cleaner = asyncio.create_task(files.clean_forever())
        counter = asyncio.create_task(quotas.flush_forever())
        accountant = asyncio.create_task(ledger.flush_forever())
        pruner = asyncio.create_task(prune_captures_forever(captures, scheduler)) if captures else None
        if drift is not None:
            drift.start()
        if simulator is not None:
            simulator.start()
        pump = asyncio.create_task(feed.pump_forever()) if feed is not None else None
        experimenter = asyncio.create_task(experiments.run_forever())
        app.state.ready = True
        yield
        app.state.ready = False
        cleaner.cancel()
        counter.cancel()
        accountant.cancel()
        experimenter.cancel()
        if pruner is not None:
            pruner.cancel()
        try:
            await scheduler.shutdown()  # the feed's pump goes on meanwhile: the last requests' events
        finally:
            await close_drift(drift, feed, pump)
            if simulator is not None:
                await simulator.stop()
            await close_sessions(app)
            await router.close()
            await close_all(proxy, adapters, quotas, footprints, keys, idempotency, ledger, audit, captures, tracing)
            experiments.close()  # the last counts (after the last requests finished)
            versions.close()

    app = FastAPI(title="modelyard", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    app.state.scheduler = scheduler
    app.state.adapters = adapters
    app.state.files = files
    app.state.keys = keys
    app.state.ledger = ledger
    app.state.audit = audit
    app.state.captures = captures
    app.state.drift = drift
    app.state.simulator = simulator
    app.state.sibling_sessions = {}
    app.state.registry = registry
    app.state.versions = versions
    app.state.experiments = experiments
    app.state.ready = False
    install_error_handlers(app, "orchestrator")
    app.include_router(build_admin_router())
    app.include_router(build_files_router())
    app.include_router(build_keys_router())
    app.include_router(build_usage_router())
    app.include_router(build_audit_router())
    app.include_router(build_capture_router())
    app.include_router(build_drift_router())
    app.include_router(build_simulator_router())
    app.include_router(build_versions_router())
    app.include_router(build_experiments_router())
    app.include_router(build_ui_router())
    app.mount("/ui/static", static_files(), name="ui-static")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        # A key limited to some models sees only those.
        principal: Principal | None = getattr(request.state, "principal", None)

        def shown(model_id: str, adapter: str | None = None) -> bool:
            return principal is None or principal.may_use(model_id, adapter, registry.canonical)

        data = []
        for model_id, model in scheduler.config.models.items():
            if not shown(model_id):
                continue
            service = scheduler.services[model_id]
            # With local replicas (chat~2 ...): ready when any of them is.
            ready = model.replicas is not None and model.replicas.local_count > 1 and any(
                s.model_id == model_id and s.state is State.READY for s in scheduler.services.values())
            data.append(
                {
                    "id": model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "modelyard",
                    "type": model.type,
                    "aliases": model.aliases,
                    "state": State.READY.value if ready else service.state.value,
                }
            )
        for name in versions.names():  # registered models: their versions this caller may use
            if name in registry.names:
                continue  # shadowed by a models.yaml name since (that one is served)
            listed = principal is not None and principal.models is not None and name in principal.models
            usable = [v for v in versions.versions(name, metadata=False)
                      if v["model"] in scheduler.config.models and (listed or shown(v["model"]))]
            if usable:
                aliases = {alias: version for alias, version in versions.aliases(name).items()
                           if any(v["version"] == version for v in usable)}
                data.append({"id": name, "object": "model", "created": int(min(v["created"] for v in usable)),
                             "owned_by": "modelyard", "type": scheduler.config.models[usable[0]["model"]].type,
                             "versions": [v["version"] for v in usable], "aliases": aliases})
        for adapter in adapters.all():  # LoRA adapters: models of their own, on a base model's service
            if not shown(adapter.base, adapter.name):
                continue
            base = scheduler.services[adapter.base]
            data.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "modelyard",
                    "type": base.config.type,
                    "parent": adapter.base,
                    "state": base.state.value,
                }
            )
        return {"object": "list", "data": data}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: started, not shutting down, not in maintenance (a load balancer sends nothing then)."""
        if endpoint.maintenance.enabled:
            return JSONResponse({"status": "maintenance"}, status_code=503)
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
    endpoint = OpenAIEndpoint(app, registry, scheduler, proxy, body_limit_of(config))
    endpoint.files = files
    endpoint.limiter = Limiter(quotas)
    endpoint.ledger = ledger
    endpoint.tracing = tracing
    endpoint.request_log = RequestLog(audit, captures, config.settings.audit_requests)
    endpoint.request_metrics = RequestMetrics(metrics_registry)
    endpoint.idempotency = idempotency
    endpoint.drift_feed = feed
    endpoint.router = router
    endpoint.experiments = experiments
    app.state.router = router
    app.state.maintenance = endpoint.maintenance
    app.state.recent = endpoint.recent
    app.state.ui_sessions = None
    if config.settings.cors_origins:
        endpoint.add_cors(config.settings.cors_origins)
    if config.settings.auth.enabled:
        jwt_settings = config.settings.auth.jwt
        internal = {simulator_token: simulator_principal()} if simulator_token else None
        app.state.ui_sessions = UiSessions(load_or_create_key(config.state_path() / "ui.key"))
        endpoint.auth = Authenticator(keys, JwtVerifier(jwt_settings).verify if jwt_settings else None, internal,
                                      app.state.ui_sessions)
    reloading = asyncio.Lock()

    async def reload(drain: float = 30.0) -> dict[str, Any]:
        """Re-read models.yaml and apply it (SIGHUP, POST /admin/reload). A
        file with errors changes nothing: 400 listing them."""
        if config_path is None:
            raise ServiceError(409, "this orchestrator was not started from a file", code="reload_unavailable")
        if scheduler.closing:
            raise ServiceError(503, "the orchestrator is shutting down", code="shutting_down", retry_after=5)
        try:
            new = await asyncio.to_thread(load_config, config_path)
        except ConfigError as err:
            log_event(log, "reload rejected", logging.ERROR, problems=err.problems)
            raise ServiceError(
                400, f"the configuration was not reloaded (the running one stays): {err}", code="invalid_config"
            ) from None
        keyring = None
        if new.settings.capture.enabled:  # checked even when turning it on waits for a restart
            try:  # the new keys must load before anything is applied
                keyring = await asyncio.to_thread(keyring_of, new.settings.capture)
            except ValueError as err:
                log_event(log, "reload rejected", logging.ERROR, problems=[f"settings.capture: {err}"])
                raise ServiceError(400, f"the configuration was not reloaded (the running one stays): "
                                   f"settings.capture: {err}", code="invalid_config") from None
        if not new.models and scheduler.config.models:
            # Most likely a file caught half-written by an editor: refuse rather than stop everything.
            log_event(log, "reload rejected", logging.ERROR, problems=["the new file has no models"])
            raise ServiceError(
                409,
                f"{config_path} has no models now; reloading it would stop every model, so it was not reloaded "
                "(to serve nothing, stop the orchestrator)",
                code="reload_refused",
            )
        # Shielded: a caller that goes away must not leave a reload half done.
        return await asyncio.shield(apply(new, drain, keyring))

    async def apply(new: Config, drain: float, keyring: Any = None) -> dict[str, Any]:
        async with reloading:  # reloads apply one after another, in order
            current = scheduler.config.settings
            kept = [name for name in RESTART_SETTINGS if getattr(new.settings, name) != getattr(current, name)]
            if new.settings.capture.enabled != current.capture.enabled:
                kept.append("capture")  # turning capture on or off takes a restart; until then, the old one
            if kept:
                new.settings = new.settings.model_copy(update={name: getattr(current, name) for name in kept})
            # No await between these and the scheduler's first step: no request
            # sees a name the scheduler does not know yet.
            registry.update(new)
            if keyring is not None and captures is not None:
                captures.set_keyring(keyring)  # new records under the new current key; older ones stay readable
                captures.max_bytes = int(new.settings.capture.max_body_mb * 1024 * 1024)
            endpoint.request_log.audit_requests = new.settings.audit_requests
            endpoint.body_limit = body_limit_of(new)
            files.set_ttl(new.settings.file_ttl)
            app.state.config = new
            router.apply(new)
            report: dict[str, Any] = await scheduler.reconfigure(new, drain)
        report["restart_required"] = kept
        log_event(log, "configuration reloaded", path=str(config_path), **report)
        return report

    app.state.reload = reload
    endpoint.reload = reload
    return endpoint


async def close_all(proxy: Proxy, adapters: Adapters, quotas: Quotas, footprints: Footprints, keys: KeyStore,
                    idempotency: IdempotencyStore, ledger: Ledger, audit: AuditLog, captures: CaptureStore | None,
                    tracing: Tracing) -> None:
    """At shutdown, after the scheduler's: the last answers' tokens, usage and
    entries are kept. Each on its own: one that fails does not keep the others
    from closing."""
    closing: list[Any] = [proxy.close, adapters.close, quotas.flush, footprints.close, keys.close,
                          idempotency.close, ledger.close, audit.close]
    if captures is not None:
        closing.append(captures.close)
    closing.append(lambda: asyncio.to_thread(tracing.shutdown))  # the last spans out (an HTTP call)
    for close in closing:
        try:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # noqa: BLE001 - logged; the rest still close
            log.exception("closing %s failed", getattr(close, "__qualname__", close))


def drift_monitor(config: Config, instance: str, registry: Registry, scheduler: Scheduler, proxy: Proxy,
                  metrics_registry: CollectorRegistry) -> tuple[Sibling | None, DriftFeed | None]:
    """The drift service (settings.drift.enabled) and the request feed into it."""
    settings = config.settings.drift
    if not settings.enabled:
        return None, None
    token = secrets.token_urlsafe(32)  # only this orchestrator may post the request feed
    sibling = Sibling("drift", lambda port: sibling_launch_spec("drift", port, scheduler.config, instance,
                                                                env={FEED_TOKEN_ENV: token}),
                      settings.startup_timeout, config.settings.shutdown_grace)
    if not settings.feed_requests:
        return sibling, None
    embed = prompt_embedder(settings.prompt_embeddings, registry, scheduler, proxy) \
        if settings.prompt_embeddings else None
    feed = DriftFeed(config.state_path() / "drift_feed.db", lambda: sibling.ready_url(0), FeedMetrics(metrics_registry),
                     settings.max_pending, settings.batch_size, embed, token)
    return sibling, feed


def prompt_embedder(model_id: str, registry: Registry, scheduler: Scheduler, proxy: Proxy) -> Embedder:
    """Texts -> vectors with the embedding model model_id, through the
    scheduler like any request (it is started when needed, and may be evicted)."""
    async def embed(texts: list[str]) -> list[list[float]]:
        target = registry.resolve(model_id, "/v1/embeddings")
        lease = await scheduler.acquire(target.model_id)
        try:
            assert proxy.session is not None
            async with proxy.session.post(lease.url + "/v1/embeddings",
                                          json={"model": target.upstream, "input": texts}) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"{model_id} answered HTTP {answer.status}")
                data = (await answer.json())["data"]
        finally:
            lease.release()
        return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]

    return embed


async def close_drift(drift: Sibling | None, feed: DriftFeed | None, pump: asyncio.Task[None] | None) -> None:
    """At shutdown, after the last requests: the feed's round under way ends
    (never cut: its rows would be half sent), the events left are written and
    sent if the drift service takes them within seconds, then it stops."""
    try:
        if feed is not None:
            feed.stop()
            if pump is not None:  # its round ends after the batch it is sending (within SEND_TIMEOUT)
                await asyncio.wait([pump], timeout=10.0)
                pump.cancel()  # still sending to a drift service that hangs: resending later is harmless
                await asyncio.wait([pump])  # what it took from memory is written before the database closes
            await feed.close_writer()
            if drift is not None and drift.url is not None:
                try:
                    await feed.pump(deadline=time.monotonic() + 5.0)
                except Exception:  # noqa: BLE001 - they wait in drift_feed.db
                    log.exception("sending the last request events for drift failed")
            if feed.pending():
                log_event(log, "request events wait in drift_feed.db for the next start", logging.WARNING,
                          events=feed.pending())
            await feed.close()
    finally:
        if drift is not None:
            await drift.stop()


async def close_sessions(app: FastAPI) -> None:
    """The connection pools to the sibling services (orchestrator/sibling_api.py)."""
    for session in app.state.sibling_sessions.values():
        await session.close()


def simulator_service(config: Config, instance: str, scheduler: Scheduler,
                      config_path: str | os.PathLike[str] | None,
                      listen: tuple[str, int]) -> tuple[Sibling | None, str | None]:
    """The simulator (settings.simulator.enabled), and the secret its benchmark job
    sends to this orchestrator (auth.Authenticator's internal principal)."""
    settings = config.settings.simulator
    if not settings.enabled:
        return None, None
    token = secrets.token_urlsafe(32)
    # The sibling runs from the checkout: a path relative to where the orchestrator was started means nothing there.
    extra = ("--config", str(Path(config_path).resolve())) if config_path is not None else ()
    env = {ORCHESTRATOR_URL_ENV: orchestrator_url(*listen),
           SIMULATOR_TOKEN_ENV: token}
    sibling = Sibling("simulator", lambda port: sibling_launch_spec("simulator", port, scheduler.config, instance,
                                                                    extra_args=extra, env=env),
                      settings.startup_timeout, config.settings.shutdown_grace)
    return sibling, token




def open_captures(config: Config) -> CaptureStore | None:
    """The encrypted capture store when settings.capture is on. Its key must
    load: __main__ checked it before we got here."""
    settings = config.settings.capture
    if not settings.enabled:
        return None
    return CaptureStore(config.state_path() / "captures.db", keyring_of(settings),
                        max_bytes=int(settings.max_body_mb * 1024 * 1024))


async def prune_captures_forever(captures: CaptureStore, scheduler: Scheduler, every: float = 3600.0) -> None:
    """Delete records older than settings.capture.retention_days, hourly."""
    while True:
        days = scheduler.config.settings.capture.retention_days
        try:
            removed = await asyncio.to_thread(captures.prune, time.time() - days * 86400)
            if removed:
                log_event(log, "old captures deleted", records=removed, retention_days=days)
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("deleting old captures failed")
        await asyncio.sleep(every)


def body_limit_of(config: Config) -> int:
    return int(config.settings.max_request_mb * 1024 * 1024)
