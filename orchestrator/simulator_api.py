"""/simulator/* on the orchestrator's port: the performance simulator's API
(models/simulator/README.md), forwarded to the sibling service behind the
orchestrator's auth (scopes simulator:read for GET, simulator:write for the
rest), body limit and audit (orchestrator/sibling_api.py).

The simulator's benchmark job measures a model through this orchestrator,
with a credential of its own (simulator_principal) that may run inference
and read the model and service lists, nothing more. Starting a job therefore also
needs the caller to be allowed the model it names.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from core.errors import ServiceError
from orchestrator.auth import Principal
from orchestrator.sibling_api import build_sibling_router

FORWARD_TIMEOUT = 120.0  # a genetic search over many devices takes seconds, not minutes
INTERNAL_NAME = "simulator"


def simulator_principal() -> Principal:
    """Who the simulator's benchmark requests are: inference, the model list and the
    service list (to see where a model was placed); nothing of the admin API beyond."""
    return Principal(name=INTERNAL_NAME, role="member",
                     scopes=frozenset({"models:read", "inference", "services:read"}),
                     key_id="internal:simulator")


async def _may_benchmark(request: Request, path: str, body: bytes) -> None:
    if request.method != "POST" or path.rstrip("/") != "benchmarks":
        return
    try:
        model = json.loads(body or b"{}").get("model")
    except (ValueError, AttributeError):
        return  # the simulator answers the malformed body with its own 400
    if not isinstance(model, str):
        return
    registry = request.app.state.registry
    model_id = registry.canonical(model)
    configured = request.app.state.scheduler.config.models.get(model_id)
    if configured is not None and configured.replicas is not None:
        # Its load would be spread over the replicas, and recorded as one deployment's figures.
        raise ServiceError(409, f"model '{model_id}' has replicas (models.yaml `replicas:`): a benchmark through "
                           "/v1 would measure them together; benchmark a model without replicas",
                           code="model_has_replicas", param="model")
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None and principal.models is not None:  # else auth is off, or the key may use every model
        principal.require_model(model, model_id, None, registry.canonical)


def build_simulator_router() -> APIRouter:
    return build_sibling_router(
        "simulator",
        "the simulator is off; turn it on with settings.simulator.enabled in models.yaml "
        "(and ./scripts/install.sh --engine simulator)",
        timeout=FORWARD_TIMEOUT, check=_may_benchmark)


def orchestrator_url(host: str, port: int) -> str:
    """Where a sibling on this host reaches the orchestrator."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

