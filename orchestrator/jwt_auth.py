"""JWT bearer tokens (settings.auth.jwt), checked with PyJWT.

HS256 with a shared secret read from an environment variable, or RS256 and
ES256 against the public keys of a JWKS file (picked by the token's kid).
Only those algorithms are accepted for the configured key source, so neither
`alg: none` nor an HS256 token signed with a public key gets through. exp and
aud are required; iss is checked when configured; nbf and iat when present.

Claims become the request's principal: the role claim (viewer, member, admin,
or a list of roles meaning the highest of them; default_role when absent),
extra scopes (a space-separated string as OAuth writes it, or a list; scopes
modelyard does not know, such as openid, are ignored), the models it may use,
and its tenant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jwt

from core.config import JwtSettings
from orchestrator.auth import ROLE_SCOPES, SCOPES, Principal
from orchestrator.keys import KeyRejected

PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        """ValueError naming the problem when the key source is unusable."""
        self.settings = settings
        self.secret: str | None = None
        self.jwks: jwt.PyJWKSet | None = None
        if settings.secret_env is not None:
            self.secret = os.environ.get(settings.secret_env) or None
            if self.secret is None:
                raise ValueError(f"settings.auth.jwt.secret_env: the environment variable {settings.secret_env} "
                                 "is not set (it holds the HS256 secret)")
            if len(self.secret.encode()) < 32:
                raise ValueError(f"settings.auth.jwt.secret_env: the secret in {settings.secret_env} is shorter "
                                 "than 32 bytes, too short for HS256")
            self.algorithms = ["HS256"]
        else:
            path = Path(settings.jwks_file or "")
            try:
                self.jwks = public_jwks(path.read_text())
            except OSError as exc:
                raise ValueError(f"settings.auth.jwt.jwks_file: cannot read {path}: {exc.strerror}") from None
            except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, AttributeError) as exc:
                raise ValueError(f"settings.auth.jwt.jwks_file: {path} is not a usable JWKS: {exc}") from None
            self.algorithms = PUBLIC_KEY_ALGORITHMS

    def _key(self, token: str) -> Any:
        if self.secret is not None:
            return self.secret
        assert self.jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise KeyRejected("invalid_token", "the bearer token is not a JWT") from None
        for key in self.jwks.keys:
            if key.key_id == kid:
                return key
        raise KeyRejected("invalid_token", f"the token's key id {str(kid)[:64]!r} is not in the JWKS file")

    def verify(self, token: str) -> Principal:
        """The principal a valid token stands for; KeyRejected saying why not."""
        settings = self.settings
        try:
            claims = jwt.decode(
                token, self._key(token), algorithms=self.algorithms, audience=settings.audience,
                issuer=settings.issuer, leeway=settings.leeway,
                options={"require": ["exp", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise KeyRejected("expired_token", "the token has expired") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError for a weak key among them
            raise KeyRejected("invalid_token", f"the token is not valid: {exc}") from None
        return principal_of(claims, settings)


def public_jwks(text: str) -> jwt.PyJWKSet:
    """The JWKS's keys, which must all be public RSA or EC keys (a private or
    symmetric key in a file of public keys is a mistake to stop at)."""
    data = json.loads(text)
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("no \"keys\" list")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC") or "d" in key:
            raise ValueError("only public RSA and EC keys belong in it (found a private, symmetric or unknown key)")
        if not key.get("kid"):
            raise ValueError("every key needs a kid: tokens name their key by it")
    return jwt.PyJWKSet(keys)


def role_of(claim: Any, settings: JwtSettings) -> str:
    """The role a claim names: a string, or a list (as many identity providers
    send roles) meaning its highest known role."""
    names = claim if isinstance(claim, list) else [claim]
    known = [name for name in names if isinstance(name, str) and name in ROLE_SCOPES]
    if not known:
        shown = json.dumps(claim)[:100]
        raise KeyRejected("invalid_token", f"the token's {settings.role_claim} claim {shown} names none of "
                          f"{', '.join(ROLE_SCOPES)}")
    return max(known, key=list(ROLE_SCOPES).index)


def principal_of(claims: dict[str, Any], settings: JwtSettings) -> Principal:
    role = role_of(claims.get(settings.role_claim, settings.default_role), settings)
    granted = claims.get(settings.scopes_claim) or []
    if isinstance(granted, str):
        granted = granted.split()
    if not isinstance(granted, list):
        raise KeyRejected("invalid_token", f"the token's {settings.scopes_claim} claim is neither a string nor a list")
    models = claims.get(settings.models_claim)
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise KeyRejected("invalid_token", f"the token's {settings.models_claim} claim is not a list of model names")
    tenant = claims.get(settings.tenant_claim)
    subject = str(claims.get("sub") or "unknown")
    return Principal(
        name=subject,
        role=role,
        scopes=ROLE_SCOPES[role] | frozenset(scope for scope in granted if scope in SCOPES),
        models=None if models is None else frozenset(models),
        key_id=f"jwt:{subject}",
        tenant=None if tenant is None else str(tenant),
    )
