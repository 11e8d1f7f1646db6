"""/admin/registry: model versions and aliases (orchestrator/versions.py).

A registered model (`chat`) has versions (SemVer), each served by a
models.yaml model; clients then ask for `chat@production`, `chat:1.2.0` or
`chat` (its @production, else @latest). Reading needs admin:read, changing
admin:models; every change is in the audit log (request_log.py) and in the
registry's own history.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ServiceError
from orchestrator.versions import RegistryError, VersionStore


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128, description="SemVer 2.0.0, e.g. 1.2.0 or 2.0.0-rc.1.")
    model: str = Field(min_length=1, max_length=300, description="The models.yaml model (id or alias) serving it.")
    parent: str | None = Field(None, max_length=128, description="The version it was derived from (lineage).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free: training metrics, notes (<= 64 KiB).")


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128)


def _store(request: Request) -> VersionStore:
    return request.app.state.versions  # type: ignore[no-any-return]


def actor_of(request: Request) -> str | None:
    principal = getattr(request.state, "principal", None)
    return principal.name if principal is not None else None


def require_use(request: Request, model_id: str) -> None:
    """A key limited to some models may point versions and aliases only at those (else it
    could reach any model through a name it lists)."""
    principal = getattr(request.state, "principal", None)
    if principal is not None and not principal.may_use(model_id, None, request.app.state.registry.canonical):
        raise ServiceError(403, f"the credential {principal.key_id} may not use the model '{model_id}'",
                           code="model_not_allowed", param="model")


def _refused(exc: RegistryError) -> ServiceError:
    return ServiceError(exc.status, exc.message, code=exc.code, param=exc.param)


def build_versions_router() -> APIRouter:
    router = APIRouter(prefix="/admin/registry", tags=["admin: registry"])

    @router.get("/models")
    async def list_registered(request: Request) -> dict[str, Any]:
        store = _store(request)
        return {"object": "list", "data": [
            {"name": name, "versions": len(store.versions(name, metadata=False)), "aliases": store.aliases(name)}
            for name in store.names()]}

    @router.post("/models/{name}/versions", status_code=201)
    async def create_version(request: Request, name: str, body: VersionCreate) -> dict[str, Any]:
        registry = request.app.state.registry
        if name in registry.names:  # `chat` as a registered name and a models.yaml name would be ambiguous
            raise ServiceError(409, f"'{name}' is a model (or alias) of models.yaml; register versions under "
                               "another name", code="name_taken")
        model_id = registry.names.get(body.model)
        if model_id is None:
            raise ServiceError(400, f"models.yaml has no model '{body.model}' to serve this version",
                               code="unknown_model", param="model")
        require_use(request, model_id)
        if registry.adapters is not None and registry.adapters.get(name) is not None:
            raise ServiceError(409, f"'{name}' is a LoRA adapter's name; register versions under another name",
                               code="name_taken")
        try:
            return _store(request).create_version(name, body.version, model_id, parent=body.parent,
                                                  metadata=body.metadata, actor=actor_of(request))
        except RegistryError as exc:
            raise _refused(exc) from None

    @router.get("/models/{name}")
    async def describe_registered(request: Request, name: str) -> dict[str, Any]:
        store = _store(request)
        versions = store.versions(name)
        if not versions:
            raise ServiceError(404, f"no registered model '{name}'", code="registered_model_not_found")
        return {"name": name, "aliases": store.aliases(name), "versions": versions}

    @router.get("/models/{name}/versions/{version}")
    async def describe_version(request: Request, name: str, version: str) -> dict[str, Any]:
        store = _store(request)
        record = store.version(name, version)
        if record is None:
            raise ServiceError(404, f"'{name}' has no version {version}", code="version_not_found")
        return {**record, "lineage": store.lineage(name, version)}

    @router.put("/models/{name}/aliases/{alias}")
    async def set_alias(request: Request, name: str, alias: str, body: AliasMove) -> dict[str, Any]:
        request.app.state.experiments.guard_alias(name, alias)  # a running rollout or A/B test moves it
        target = _store(request).version(name, body.version)
        if target is not None:
            require_use(request, target["model"])
        try:
            return _store(request).set_alias(name, alias, body.version, actor=actor_of(request))
        except RegistryError as exc:
            raise _refused(exc) from None

    @router.delete("/models/{name}/aliases/{alias}")
    async def delete_alias(request: Request, name: str, alias: str) -> dict[str, Any]:
        request.app.state.experiments.guard_alias(name, alias)
        try:
            _store(request).delete_alias(name, alias, actor=actor_of(request))
        except RegistryError as exc:
            raise _refused(exc) from None
        return {"name": name, "alias": alias, "deleted": True}

    @router.get("/history")
    async def history(request: Request, name: str | None = Query(None, max_length=300),
                      limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"object": "list", "data": _store(request).history(name, limit)}

    return router
