"""Admin API for API keys (scope admin:keys): create, list, show, revoke, rotate.

    POST   /admin/keys                {name, role, scopes, models, owner, expires_in | expires_at, rpm, tpm,
                                       quota: {requests, tokens, period: day | month}}
                                      -> 201 {"key": "my-...", ...}: the only time the key is shown
    GET    /admin/keys                -> {"keys": [...]}
    GET    /admin/keys/{id}
    DELETE /admin/keys/{id}           revoke, at once
    POST   /admin/keys/{id}/rotate?grace=S
                                      -> 201 a new key with the same settings; the old one ends after S seconds
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ServiceError
from orchestrator.auth import ROLE_SCOPES, SCOPES, Principal
from orchestrator.keys import KeyLimits, KeyStore

TEN_YEARS = 10 * 365 * 86400.0


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requests: int | None = Field(None, ge=0, description="requests per period; null: no limit")
    tokens: int | None = Field(None, ge=0, description="tokens (prompt and completion) per period; null: no limit")
    period: Literal["day", "month"] = "day"


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    role: Literal["viewer", "member", "admin"] = "member"
    scopes: list[Literal[SCOPES]] = Field(default_factory=list)  # type: ignore[valid-type]
    models: list[str] | None = Field(None, description="model ids or aliases it may use; null: every model")
    owner: str | None = Field(None, max_length=200)
    expires_in: float | None = Field(None, gt=0, le=TEN_YEARS, description="seconds from now")
    expires_at: float | None = Field(None, gt=0, description="unix time")
    rpm: float | None = Field(None, gt=0, description="requests per minute; null: no limit")
    tpm: float | None = Field(None, gt=0, description="tokens per minute; null: no limit")
    quota: Quota | None = Field(None, description="requests and tokens per UTC day or month; null: no quota")


def within_reach(request: Request, role: str, scopes: list[str]) -> None:
    """403 when the caller would make a key that may do more than the caller:
    admin:keys lets a key mint keys up to its own scopes, not beyond."""
    caller: Principal | None = getattr(request.state, "principal", None)
    if caller is None:  # auth is off: the caller is whoever reached the port
        return
    beyond = sorted((ROLE_SCOPES[role] | set(scopes)) - caller.scopes)
    if beyond:
        raise ServiceError(403, f"a key with role {role} and these scopes could do more than yours: "
                           f"{', '.join(beyond)}", code="insufficient_scope")


def build_keys_router() -> APIRouter:
    router = APIRouter(prefix="/admin/keys", tags=["admin: keys"])

    def keys_of(request: Request) -> KeyStore:
        return request.app.state.keys

    def found(store: KeyStore, key_id: str) -> Any:
        key = store.get(key_id)
        if key is None:
            raise ServiceError(404, f"no API key with id '{key_id}'", code="key_not_found")
        return key

    @router.post("", status_code=201)
    async def create_key(request: Request, body: KeyRequest) -> dict[str, Any]:
        if body.expires_in is not None and body.expires_at is not None:
            raise ServiceError(400, "give expires_in or expires_at, not both", code="invalid_request",
                               param="expires_at")
        expires = time.time() + body.expires_in if body.expires_in is not None else body.expires_at
        if expires is not None and expires <= time.time():
            raise ServiceError(400, "expires_at is in the past", code="invalid_request", param="expires_at")
        if expires is not None and expires > time.time() + TEN_YEARS:
            raise ServiceError(400, "expires_at is more than ten years away; leave it out for a key that does not "
                               "expire", code="invalid_request", param="expires_at")
        within_reach(request, body.role, body.scopes)
        if body.models is not None and not all(name.strip() for name in body.models):
            raise ServiceError(400, "models: a model name must not be empty", code="invalid_request", param="models")
        quota = body.quota
        limits = KeyLimits(rpm=body.rpm, tpm=body.tpm, quota_requests=quota.requests if quota else None,
                           quota_tokens=quota.tokens if quota else None, quota_period=quota.period if quota else None)
        key, secret = keys_of(request).create(body.name, body.role, tuple(body.scopes),
                                              None if body.models is None else tuple(body.models),
                                              body.owner, expires, limits)
        request.state.audit_detail = {"key_id": key.id, "name": key.name, "role": key.role}
        return {"key": secret, **key.public()}

    @router.get("")
    async def list_keys(request: Request) -> dict[str, Any]:
        return {"keys": [key.public() for key in keys_of(request).all()]}

    @router.get("/{key_id}")
    async def get_key(request: Request, key_id: str) -> dict[str, Any]:
        return found(keys_of(request), key_id).public()

    @router.delete("/{key_id}")
    async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
        store = keys_of(request)
        found(store, key_id)
        return store.revoke(key_id).public()

    @router.post("/{key_id}/rotate", status_code=201)
    async def rotate_key(
        request: Request, key_id: str, grace: float = Query(0.0, ge=0, le=30 * 86400)
    ) -> dict[str, Any]:
        store = keys_of(request)
        key = found(store, key_id)
        within_reach(request, key.role, list(key.scopes))
        try:
            new, secret, old = store.rotate(key_id, grace)
        except ValueError as exc:
            raise ServiceError(409, str(exc), code="key_not_active") from None
        request.state.audit_detail = {"key_id": new.id, "replaces": old.id}
        return {"key": secret, **new.public(), "replaces": old.public()}

    return router
