"""Who is asking, and may they: API keys, roles, scopes, per-model access.

With `settings.auth.enabled`, every request carries a key, as
`Authorization: Bearer <key>` (what OpenAI clients send) or `x-api-key`, or
with settings.auth.jwt a JWT as the bearer token (jwt_auth.py), or, without
either, the dashboard's session cookie standing for a key (ui_session.py). 401: no
credential, a malformed, unknown, expired or revoked one (the code says
which); 403: a valid one whose role and scopes do not cover the route, or
whose model list does not hold the model asked for.

Roles nest, admin > member > viewer; a key's explicit scopes add to its
role's. Open without a key: /health, /ready (probes), /files/ (the URL's
signature is the credential), the API schema and docs, and the dashboard's
sign-in (/ui/login, /ui/logout) and static files.

With auth off nothing is checked: whoever reaches the port may do anything,
so the orchestrator then listens on loopback only, unless
settings.auth.insecure_public says otherwise (orchestrator/__main__.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.errors import ServiceError
from orchestrator.keys import ApiKey, KeyRejected, KeyStore
from orchestrator.limits import QuotaSpec
from orchestrator.ui_session import UiSessions, has_csrf_header, session_cookie

SCOPES = ("models:read", "inference", "metrics:read", "admin:read", "admin:models", "admin:keys", "audit:read",
          "captures:read", "drift:read", "drift:write", "simulator:read", "simulator:write", "services:read")
# A scope a wider one includes: admin:read covers the service list (services:read
# alone is what the simulator's benchmark job gets, to see where a model runs).
IMPLIED_BY = {"services:read": "admin:read"}
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"models:read"}),
    "member": frozenset({"models:read", "inference"}),
    "admin": frozenset(SCOPES),
}
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/ui/login", "/ui/logout"})
OPEN_PREFIXES = ("/files/", "/ui/static/")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    key_id: str | None = None  # an API key's id, or jwt:<subject>
    tenant: str | None = None
    rpm: float | None = None  # the key's rate limits (orchestrator/limits.py): requests per minute
    tpm: float | None = None  # and tokens per minute
    quota: QuotaSpec | None = None  # the key's quotas per day or month
    quota_id: str | None = None  # what its quota is counted under: the key's lineage

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        scopes = ROLE_SCOPES[key.role] | frozenset(key.scopes)
        models = None if key.models is None else frozenset(key.models)
        quota = None
        if key.quota_requests is not None or key.quota_tokens is not None:
            quota = QuotaSpec(key.quota_period or "day", key.quota_requests, key.quota_tokens)
        return cls(name=key.name, role=key.role, scopes=scopes, models=models, key_id=key.id, rpm=key.rpm,
                   tpm=key.tpm, quota=quota, quota_id=key.lineage)

    def require(self, scope: str) -> None:
        if scope not in self.scopes and IMPLIED_BY.get(scope) not in self.scopes:
            raise ServiceError(403, f"the credential {self.key_id} ({self.role}) lacks the scope '{scope}' this "
                               "route needs", code="insufficient_scope")

    def may_use(self, model_id: str, adapter: str | None, canonical: Callable[[str], str]) -> bool:
        """Whether the key may use model_id (and the adapter on it). A listed
        alias stands for its model; a listed base model covers its adapters."""
        if self.models is None:
            return True
        if adapter is not None and adapter in self.models:
            return True
        return any(canonical(name) == model_id for name in self.models)

    def require_model(self, name: str, model_id: str, adapter: str | None, canonical: Callable[[str], str]) -> None:
        if not self.may_use(model_id, adapter, canonical):
            raise ServiceError(403, f"the credential {self.key_id} may not use the model '{name}'",
                               code="model_not_allowed", param="model")


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs; None for the open ones. Paths it does not
    know (they answer 404, or redirect a trailing slash) need the strictest."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path == "/admin/keys" or path.startswith("/admin/keys/"):
        return "admin:keys"
    if path == "/admin/audit" or path.startswith("/admin/audit/"):
        return "audit:read"
    if path == "/admin/captures" or path.startswith("/admin/captures/"):
        return "captures:read"  # prompts and answers: admins only, or a key given this scope
    if method in ("GET", "HEAD") and (path == "/admin/services" or (
            path.startswith("/admin/services/") and not path.endswith("/logs"))):
        return "services:read"  # the service list and one service's state: not its logs
    if path.startswith("/admin/"):
        return "admin:read" if method in ("GET", "HEAD") else "admin:models"
    if path == "/metrics":
        return "metrics:read"
    if path == "/drift" or path.startswith("/drift/"):  # the drift monitor's API (orchestrator/drift_api.py)
        return "drift:read" if method in ("GET", "HEAD") else "drift:write"
    if path == "/simulator" or path.startswith("/simulator/"):  # the simulator (orchestrator/simulator_api.py)
        return "simulator:read" if method in ("GET", "HEAD") else "simulator:write"
    if path == "/v1/models" or path == "/ui" or path.startswith("/ui/"):
        return "models:read"  # the dashboard's pages: each part checks its own scope (orchestrator/ui.py)
    if path.startswith("/v1/"):
        return "inference"  # the OpenAI routes (endpoint.py handles them itself)
    return "admin:keys"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer` or `x-api-key`; 401 for another scheme."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise ServiceError(401, "the Authorization header must be 'Bearer <API key>'", code="invalid_api_key")
            return credential.strip()
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class Authenticator:
    """Installed only with settings.auth.enabled; without it nothing is checked.
    jwt: with settings.auth.jwt, what turns a JWT (three dot-separated parts)
    into a principal, raising KeyRejected (orchestrator/jwt_auth.py)."""

    def __init__(self, keys: KeyStore, jwt: Callable[[str], Principal] | None = None,
                 internal: dict[str, Principal] | None = None, sessions: UiSessions | None = None) -> None:
        self.keys = keys
        self.jwt = jwt
        # Per-start secrets of sibling services (the simulator's benchmark job) and who they are.
        self.internal = dict(internal or {})
        self.sessions = sessions  # the dashboard's session cookies (orchestrator/ui_session.py)

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]], method: str = "GET") -> Principal:
        """The principal behind a request's headers (a key, a JWT or, without
        either, a dashboard session cookie); 401 when there is none."""
        headers = list(headers)
        try:
            presented = presented_key(headers)
        except ServiceError:  # another scheme (a proxy's Basic auth, which browsers resend): the cookie may do
            if self.sessions is None or session_cookie(headers) is None:
                raise
            presented = None
        if not presented and self.sessions is not None:
            cookie = session_cookie(headers)
            if cookie is not None:
                return self._session_principal(cookie, method, headers)
        if not presented:
            raise ServiceError(401, "an API key is required: send 'Authorization: Bearer <key>' or 'x-api-key'",
                               code="missing_api_key")
        for secret, principal in self.internal.items():
            if hmac.compare_digest(presented.encode(), secret.encode()):
                return principal
        try:
            if self.jwt is not None and presented.count(".") == 2:
                return self.jwt(presented)
            return Principal.of(self.keys.verify(presented))
        except KeyRejected as exc:
            raise ServiceError(401, exc.message, code=exc.code) from None

    def _session_principal(self, cookie: str, method: str, headers: list[tuple[bytes, bytes]]) -> Principal:
        assert self.sessions is not None
        key_id = self.sessions.key_id_of(cookie)
        key = self.keys.get(key_id) if key_id is not None else None
        if key is None or key.state() != "active":  # forged, expired, or its key revoked or expired since
            raise ServiceError(401, "the dashboard session has ended; sign in again at /ui/login",
                               code="session_expired")
        if method not in SAFE_METHODS and not has_csrf_header(headers):
            raise ServiceError(403, "a change made with a session cookie must carry the x-modelyard-ui header",
                               code="csrf_header_missing")
        return Principal.of(key)

    def admit(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Principal | None:
        """The principal, checked against the route's scope (401, 403); None for open routes."""
        scope = required_scope(method, path)
        if scope is None:
            return None
        principal = self.authenticate(headers, method)
        try:
            principal.require(scope)
        except ServiceError as exc:
            exc.principal = principal  # type: ignore[attr-defined]  # who was refused, for the audit log
            raise
        return principal
