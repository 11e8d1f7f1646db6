"""/admin/experiments (A/B tests), /admin/rollouts (canary rollouts) and
POST /v1/feedback (users' scores of answers), over orchestrator/experiments/.

Reading needs admin:read, starting and steering admin:models (auth.py); every
change is in the audit log. Feedback needs inference, and a key rates only
the answers it got itself (an admin key any).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.experiments.ab_test import AbTestSpec
from orchestrator.experiments.canary import RolloutSpec
from orchestrator.experiments.controller import Experiments
from orchestrator.versions_api import actor_of, require_use


class StopBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promote: str | None = Field(None, max_length=128,
                                description="A variant's version to move the alias to; none: it stays where it is.")


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200, description="The x-request-id of the answer rated.")
    score: float = Field(ge=0, le=1, description="0 (bad) to 1 (good): a thumbs down is 0, a thumbs up 1.")
    comment: str | None = Field(None, max_length=2000)


def _experiments(request: Request) -> Experiments:
    return request.app.state.experiments  # type: ignore[no-any-return]


def _require_versions(request: Request, name: str, versions: list[str]) -> None:
    """A key limited to some models may experiment only with versions served by those."""
    store = request.app.state.versions
    for version in versions:
        record = store.version(name, version)
        if record is not None:
            require_use(request, record["model"])


def _require_running_versions(request: Request, experiment_id: str) -> None:
    """Steering an experiment needs the same right as starting it: every version it sends requests to."""
    target = _experiments(request).target_of(experiment_id)
    if target is not None:
        _require_versions(request, target[0], list(target[1]))


def build_experiments_router() -> APIRouter:
    router = APIRouter(tags=["admin: experiments"])

    @router.post("/admin/experiments", status_code=201)
    async def start_ab_test(request: Request, body: AbTestSpec) -> dict[str, Any]:
        _require_versions(request, body.name, [v.version for v in body.variants])
        return _experiments(request).create_ab_test(body, actor_of(request))

    @router.get("/admin/experiments")
    async def list_ab_tests(request: Request, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        return {"object": "list", "data": _experiments(request).listing("ab", limit)}

    @router.get("/admin/experiments/{experiment_id}")
    async def describe_ab_test(request: Request, experiment_id: str) -> dict[str, Any]:
        return _experiments(request).describe(experiment_id, "ab")

    @router.post("/admin/experiments/{experiment_id}/stop")
    async def stop_ab_test(request: Request, experiment_id: str, body: StopBody | None = None) -> dict[str, Any]:
        promote = body.promote if body is not None else None
        _require_running_versions(request, experiment_id)
        return _experiments(request).control(experiment_id, "ab", "stop", actor_of(request), promote)

    @router.post("/admin/rollouts", status_code=201)
    async def start_rollout(request: Request, body: RolloutSpec) -> dict[str, Any]:
        _require_versions(request, body.name, [body.version])
        return _experiments(request).create_rollout(body, actor_of(request))

    @router.get("/admin/rollouts")
    async def list_rollouts(request: Request, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        return {"object": "list", "data": _experiments(request).listing("rollout", limit)}

    @router.get("/admin/rollouts/{rollout_id}")
    async def describe_rollout(request: Request, rollout_id: str) -> dict[str, Any]:
        return _experiments(request).describe(rollout_id, "rollout")

    @router.post("/admin/rollouts/{rollout_id}/{action}")
    async def steer_rollout(request: Request, rollout_id: str,
                            action: Literal["pause", "resume", "abort"]) -> dict[str, Any]:
        _require_running_versions(request, rollout_id)
        return _experiments(request).control(rollout_id, "rollout", action, actor_of(request))

    @router.post("/v1/feedback", status_code=201, tags=["feedback"])
    async def feedback(request: Request, body: FeedbackBody) -> dict[str, Any]:
        principal = getattr(request.state, "principal", None)
        key_id = principal.key_id if principal is not None else None
        any_request = principal is None or principal.role == "admin"
        return _experiments(request).feedback(body.request_id, body.score, body.comment, key_id, any_request)

    return router
