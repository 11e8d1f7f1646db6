"""The dashboard under /ui: server-rendered pages (Jinja2) with a little
JavaScript (static/ui.js) that refreshes their parts, streams the chat
playground and shows progress. Nothing is built at install time.

Pages: / (services, memory per card, recent requests), /services/{id} (its
state and log as it grows, load / sleep / unload), /playground (chat, image
and audio try-out), /simulator (runs and benchmark jobs), /drift (monitors
with their histograms). Each page's parts are also served alone under
/ui/part/, which the scripts fetch.

Behind the orchestrator's auth: with it on, a person signs in with an API key
and gets a session cookie (orchestrator/ui_session.py). The pages need only
models:read; each part checks the scope its data needs and says when the key
lacks it. The scripts call the ordinary API (/admin/..., /v1/...), so a key
can do nothing here that it could not do with curl.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse, RedirectResponse, Response

from core.engines import service_log_path
from core.errors import ServiceError
from core.logs import log_event
from orchestrator.admin import describe, gpu_report, pool_usage, tail_lines
from orchestrator.auth import IMPLIED_BY, Principal
from orchestrator.keys import KeyRejected
from orchestrator.sibling_api import read_limited, sibling_json
from orchestrator.ui_session import cookie_header, safe_next
from orchestrator.ui_views import ago, histogram, memory_bars

log = logging.getLogger("modelyard.ui")

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["ago"] = ago
# Scripts and styles from our own files only; images and audio also as data: and blob: (the try-outs).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "media-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
LOG_LINES = 200  # a service page's log window
MAX_LOGIN_BODY = 4096
DRIFT_REPORTS = 10  # monitors whose histograms one drift page draws
SIMULATOR_RUNS = 10  # runs one simulator page lists (each with its best configurations)
PLAYGROUND_TYPES = ("text", "image", "audio")


def build_ui_router() -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    # --- signing in ---------------------------------------------------------

    @router.get("/login")
    async def login_page(request: Request, next: str | None = None) -> Response:
        if request.app.state.ui_sessions is None:  # auth is off: nothing to sign in to
            return RedirectResponse(safe_next(next), status_code=303)
        return page(request, "login.html", {"next": safe_next(next), "error": None})

    @router.post("/login")
    async def login(request: Request) -> Response:
        sessions = request.app.state.ui_sessions
        if sessions is None:
            return RedirectResponse("/ui", status_code=303)
        if not same_origin(request):  # another site's form must not sign a browser in (to the other's key)
            raise ServiceError(403, "sign in from this orchestrator's own page", code="cross_site_login")
        body = await read_limited(request, MAX_LOGIN_BODY)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        key_text = (form.get("api_key") or [""])[0].strip()
        target = safe_next((form.get("next") or [None])[0])
        try:
            key = request.app.state.keys.verify(key_text)
        except KeyRejected as exc:
            log_event(log, "dashboard sign-in refused", logging.WARNING, code=exc.code)
            request.app.state.audit.record("access", "ui.login", route="POST /ui/login", status=401,
                                           detail={"code": exc.code})
            return page(request, "login.html", {"next": target, "error": exc.message}, status=401)
        request.app.state.audit.record("access", "ui.login", actor=key.name, key_id=key.id,
                                       route="POST /ui/login", status=303)
        answer = RedirectResponse(target, status_code=303)
        answer.headers["set-cookie"] = cookie_header(sessions.issue(key.id), sessions.ttl, secure_request(request))
        return answer

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        if not same_origin(request):  # another site must not sign people out either
            raise ServiceError(403, "sign out from this orchestrator's own page", code="cross_site_logout")
        answer = RedirectResponse("/ui/login", status_code=303)
        answer.headers["set-cookie"] = cookie_header("", 0, secure_request(request))
        return answer

    # --- pages ----------------------------------------------------------------

    @router.get("")
    async def overview(request: Request) -> Response:
        return page(request, "overview.html", {
            **await services_part(request), **await requests_part(request, None)})

    @router.get("/services/{model_id:path}")
    async def service_page(request: Request, model_id: str) -> Response:
        context = await service_part(request, model_id)
        served = known_service(request, model_id).model_id  # a replica's page lists its model's requests
        return page(request, "service.html", {**context, **await logs_part(request, model_id),
                                              **await requests_part(request, served)})

    @router.get("/playground")
    async def playground(request: Request) -> Response:
        principal = principal_of(request)
        models = [{"id": model_id, "type": model.type}
                  for model_id, model in request.app.state.scheduler.config.models.items()
                  if model.type in PLAYGROUND_TYPES and (principal is None or principal.may_use(
                      model_id, None, request.app.state.registry.canonical))]
        return page(request, "playground.html", {"models": models, "may_infer": allowed(request, "inference")})

    @router.get("/simulator")
    async def simulator_page(request: Request) -> Response:
        return page(request, "simulator.html", await simulator_part(request))

    @router.get("/drift")
    async def drift_page(request: Request) -> Response:
        return page(request, "drift.html", await drift_part(request))

    # --- parts, refreshed by the scripts ------------------------------------

    @router.get("/part/services")
    async def services_fragment(request: Request) -> Response:
        return part(request, "parts/services.html", await services_part(request))

    @router.get("/part/requests")
    async def requests_fragment(request: Request, model: str | None = None) -> Response:
        return part(request, "parts/requests.html", await requests_part(request, model))

    @router.get("/part/service/{model_id:path}")
    async def service_fragment(request: Request, model_id: str) -> Response:
        return part(request, "parts/service.html", await service_part(request, model_id))

    @router.get("/part/logs/{model_id:path}")
    async def logs_fragment(request: Request, model_id: str) -> Response:
        return part(request, "parts/logs.html", await logs_part(request, model_id))

    @router.get("/part/simulator")
    async def simulator_fragment(request: Request) -> Response:
        return part(request, "parts/simulator.html", await simulator_part(request))

    @router.get("/part/drift")
    async def drift_fragment(request: Request) -> Response:
        return part(request, "parts/drift.html", await drift_part(request))

    return router


def static_files() -> StaticFiles:
    """The dashboard's scripts and styles, mounted at /ui/static (open: they hold nothing secret)."""
    return StaticFiles(directory=HERE / "static")


# --- what each part shows -------------------------------------------------------


async def services_part(request: Request) -> dict[str, Any]:
    if not allowed(request, "services:read"):
        return {"services_denied": "services:read"}
    scheduler = request.app.state.scheduler
    services = [describe(s) for s in scheduler.services.values()]
    pools = pool_usage(scheduler)
    gpus = await gpu_report(request.app)
    return {"services": services, "bars": memory_bars(services, pools, gpus), "gpus": gpus}


async def requests_part(request: Request, model: str | None) -> dict[str, Any]:
    if not allowed(request, "admin:read"):
        return {"requests_denied": "admin:read", "requests_model": model}
    return {"requests": request.app.state.recent.latest(50, model), "requests_model": model}


def known_service(request: Request, model_id: str) -> Any:
    """The service of model_id (or a replica's, chat~2); 404 alike for an unknown one and one
    the key may not use (a key limited to some models learns nothing of the others)."""
    service = request.app.state.scheduler.services.get(model_id)
    principal = principal_of(request)
    if service is None or (principal is not None and not principal.may_use(
            service.model_id, None, request.app.state.registry.canonical)):
        raise ServiceError(404, f"no model '{model_id}' is configured", code="model_not_found")
    return service


async def service_part(request: Request, model_id: str) -> dict[str, Any]:
    service = known_service(request, model_id)
    if not allowed(request, "services:read"):
        return {"model_id": model_id, "service_denied": "services:read"}
    return {"model_id": model_id, "service": describe(service), "may_change": allowed(request, "admin:models")}


async def logs_part(request: Request, model_id: str) -> dict[str, Any]:
    known_service(request, model_id)
    if not allowed(request, "admin:read"):
        return {"model_id": model_id, "logs_denied": "admin:read"}
    path = service_log_path(request.app.state.config, model_id)
    return {"model_id": model_id, "lines": await asyncio.to_thread(tail_lines, path, LOG_LINES)}


async def simulator_part(request: Request) -> dict[str, Any]:
    if not allowed(request, "simulator:read"):
        return {"simulator_denied": "simulator:read"}
    try:
        runs = (await sibling_json(request.app.state, "simulator", "runs", {"limit": SIMULATOR_RUNS}))["data"]
        jobs = (await sibling_json(request.app.state, "simulator", "benchmarks", {"limit": 10}))["data"]
        for run in runs:
            best = await sibling_json(request.app.state, "simulator", "recommendations",
                                      {"workflow_id": run["workflow_id"], "limit": 3, "error_rate_threshold": 1})
            run["best"] = best["data"]
    except ServiceError as exc:
        return {"simulator_problem": exc.message}
    except (KeyError, TypeError, AttributeError) as exc:  # an answer of another shape than the simulator's
        return {"simulator_problem": f"the simulator answered something unexpected ({type(exc).__name__})"}
    return {"runs": runs, "jobs": jobs}


async def drift_part(request: Request) -> dict[str, Any]:
    if not allowed(request, "drift:read"):
        return {"drift_denied": "drift:read"}
    try:
        monitors = (await sibling_json(request.app.state, "drift", "monitors"))["data"]
        reports = []
        for monitor in monitors[:DRIFT_REPORTS]:
            report = await sibling_json(request.app.state, "drift", f"monitors/{monitor['id']}/report")
            for feature in report["features"].values():
                feature["histogram"] = histogram(feature.get("drift"))
            reports.append(report)
    except ServiceError as exc:
        return {"drift_problem": exc.message}
    except (KeyError, TypeError, AttributeError) as exc:  # an answer of another shape than the monitor's
        return {"drift_problem": f"the drift monitor answered something unexpected ({type(exc).__name__})"}
    return {"monitors": monitors, "reports": reports}


# --- helpers -------------------------------------------------------------------------


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def allowed(request: Request, scope: str) -> bool:
    """Whether the signed-in key has scope (everything goes with auth off; with it on, nothing
    without a principal: a part reached some other way shows nothing)."""
    principal = principal_of(request)
    if principal is None:
        return request.app.state.ui_sessions is None
    return scope in principal.scopes or IMPLIED_BY.get(scope) in principal.scopes


def same_origin(request: Request) -> bool:
    """Whether a form was posted from a page of this host (browsers send Origin with a POST;
    a client without one, curl say, is no other site's page)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    public_url = request.app.state.scheduler.settings.public_url  # behind a proxy that rewrites Host
    ours = {request.headers.get("host"), request.headers.get("x-forwarded-host"),
            urlsplit(public_url).netloc if public_url else None}
    return urlsplit(origin).netloc in ours - {None}


def secure_request(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    principal = principal_of(request)
    context = {**context, "principal": principal, "auth": request.app.state.ui_sessions is not None,
               "path": request.url.path}
    answer = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    answer.headers.update(SECURITY_HEADERS)
    return answer


def part(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
    return page(request, template, context)
