"""JWT bearer tokens (settings.auth.jwt) through a real orchestrator: HS256
with a secret from the environment, RS256 and ES256 against a JWKS file;
claims to role, scopes, models and tenant; every way a token can be wrong is
a 401 with the right code; API keys keep working beside tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ROOT, fake_model

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
AUDIENCE = "modelyard-test"
ISSUER = "https://id.example.com"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
MODELS = {"chat": fake_model(aliases=["chat-alias"]), "other": fake_model()}


def token(key: Any = SECRET, algorithm: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token made now; a claim given as a function gets the time (to be in the past or the future);
    None leaves the claim out."""
    now = int(time.time())
    body = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300, **claims}
    body = {k: v(now) if callable(v) else v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def call(orch: Any, method: str, path: str, credential: str, body: dict[str, Any] | None = None) -> Any:
    with orch.client() as client:
        return client.request(method, path, json=body, headers={"Authorization": f"Bearer {credential}"})


@pytest.fixture(scope="module")
def hs256(module_orchestrator) -> Any:
    jwt_settings = {"audience": AUDIENCE, "issuer": ISSUER, "secret_env": "MODELYARD_TEST_JWT_SECRET"}
    return module_orchestrator({"settings": {"auth": {"enabled": True, "jwt": jwt_settings}}, "models": MODELS},
                               extra_env={"MODELYARD_TEST_JWT_SECRET": SECRET})


@pytest.mark.parametrize(
    ("claims", "method", "path", "status", "code"),
    [
        ({"role": "member"}, "POST", "/v1/chat/completions", 200, None),
        ({"role": "member"}, "GET", "/admin/services", 403, "insufficient_scope"),
        ({"role": "admin"}, "GET", "/admin/services", 200, None),
        ({}, "GET", "/v1/models", 200, None),  # no role claim: default_role viewer
        ({}, "POST", "/v1/chat/completions", 403, "insufficient_scope"),
        ({"scope": "openid inference"}, "POST", "/v1/chat/completions", 200, None),  # OAuth's string; openid ignored
        ({"scope": ["metrics:read"]}, "GET", "/metrics", 200, None),
        ({"role": "member", "models": ["chat-alias"]}, "POST", "/v1/chat/completions", 200, None),
        ({"role": "member", "models": ["other"]}, "POST", "/v1/chat/completions", 403, "model_not_allowed"),
        ({"role": "root"}, "GET", "/v1/models", 401, "invalid_token"),
        ({"role": ["viewer", "admin"]}, "GET", "/admin/services", 200, None),  # a list: its highest role
        ({"role": [123]}, "GET", "/v1/models", 401, "invalid_token"),
        ({"role": {"admin": True}}, "GET", "/v1/models", 401, "invalid_token"),
        ({"models": "chat"}, "GET", "/v1/models", 401, "invalid_token"),
        ({"exp": lambda now: now - 3600}, "GET", "/v1/models", 401, "expired_token"),
        ({"exp": None}, "GET", "/v1/models", 401, "invalid_token"),
        ({"aud": "someone-else"}, "GET", "/v1/models", 401, "invalid_token"),
        ({"aud": None}, "GET", "/v1/models", 401, "invalid_token"),
        ({"iss": "https://evil.example.com"}, "GET", "/v1/models", 401, "invalid_token"),
        ({"nbf": lambda now: now + 3600}, "GET", "/v1/models", 401, "invalid_token"),
    ],
)
def test_hs256_claims_decide_what_a_token_may_do(hs256, claims, method, path, status, code) -> None:
    body = {"model": "chat", **CHAT} if path == "/v1/chat/completions" else None
    response = call(hs256, method, path, token(**claims), body)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "forge",
    [
        lambda: token(key="another-secret-of-at-least-32-bytes!!!"),  # wrong signature
        lambda: token(key=None, algorithm="none", role="admin"),  # unsigned
        lambda: token(role="admin")[:-4] + "AAAA",  # tampered signature
        lambda: "not.a.jwt",
    ],
    ids=["wrong secret", "alg none", "tampered", "not a JWT"],
)
def test_forged_tokens_are_refused(hs256, forge) -> None:
    response = call(hs256, "GET", "/admin/services", forge())
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"


def test_a_token_limited_to_models_sees_only_those(hs256) -> None:
    listed = call(hs256, "GET", "/v1/models", token(models=["chat"])).json()["data"]
    assert [m["id"] for m in listed] == ["chat"]


def test_api_keys_keep_working_beside_tokens(hs256) -> None:
    made = subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(hs256.state_dir),
                           "--json", "create", "--name", "k", "--role", "viewer"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    key = json.loads(made.stdout)["key"]
    deadline = time.monotonic() + 5
    while call(hs256, "GET", "/v1/models", key).status_code != 200:
        assert time.monotonic() < deadline, "the CLI's key was not picked up"
        time.sleep(0.2)
    assert SECRET not in hs256.log() and key not in hs256.log()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "weak": rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "ec": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture(scope="module")
def jwks_orch(module_orchestrator, keys, tmp_path_factory: pytest.TempPathFactory) -> Any:
    entries = []
    for kid, private, algorithm in (("rsa-1", keys["rsa"], "RS256"), ("ec-1", keys["ec"], "ES256"),
                                    ("rsa-weak", keys["weak"], "RS256")):
        public = jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key(), as_dict=True)
        entries.append({**public, "kid": kid, "alg": algorithm, "use": "sig"})
    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_text(json.dumps({"keys": entries}))
    settings = {"audience": AUDIENCE, "jwks_file": str(jwks)}
    return module_orchestrator({"settings": {"auth": {"enabled": True, "jwt": settings}}, "models": MODELS})


def test_rs256_and_es256_tokens_are_checked_against_the_jwks(jwks_orch, keys) -> None:
    rs = token(keys["rsa"], "RS256", {"kid": "rsa-1"}, role="member")
    es = token(keys["ec"], "ES256", {"kid": "ec-1"}, role="member")
    for good in (rs, es):
        assert call(jwks_orch, "POST", "/v1/chat/completions", good, {"model": "chat", **CHAT}).status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):  # PyJWT signs it, and says it should not
        weak = token(keys["weak"], "RS256", {"kid": "rsa-weak"})
    refused = {
        "a 1024-bit RSA key": weak,
        "unknown kid": token(keys["rsa"], "RS256", {"kid": "rsa-2"}),
        "signed by another key": token(other, "RS256", {"kid": "rsa-1"}),
        "EC key under the RSA kid": token(keys["ec"], "ES256", {"kid": "rsa-1"}),
    }
    for name, bad in refused.items():
        response = call(jwks_orch, "GET", "/v1/models", bad)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token", name


def test_an_hs256_token_signed_with_the_public_key_is_refused(jwks_orch, keys) -> None:
    # The classic algorithm confusion: the attacker knows the public key and signs HMAC with it.
    pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = {"sub": "mallory", "aud": AUDIENCE, "exp": int(time.time()) + 300, "role": "admin"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    response = call(jwks_orch, "GET", "/admin/services", f"{signing_input}.{b64(signature)}")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize(
    ("jwt_settings", "env", "message"),
    [
        ({"audience": "a", "secret_env": "MODELYARD_TEST_UNSET"}, {}, "MODELYARD_TEST_UNSET is not set"),
        ({"audience": "a", "secret_env": "SHORT"}, {"SHORT": "tiny"}, "shorter than 32 bytes"),
        ({"audience": "a", "jwks_file": "/nonexistent/jwks.json"}, {}, "cannot read /nonexistent/jwks.json"),
        ({"audience": "a"}, {}, "exactly one of secret_env"),
        ({"audience": "a", "jwks_file": "PRIVATE"}, {}, "only public RSA and EC keys"),
    ],
)
def test_an_unusable_jwt_setup_stops_the_start_with_its_reason(tmp_path: Path, jwt_settings, env, message) -> None:
    if jwt_settings.get("jwks_file") == "PRIVATE":  # a JWKS holding a private key
        private = ec.generate_private_key(ec.SECP256R1())
        entry = jwt.get_algorithm_by_name("ES256").to_jwk(private, as_dict=True)
        (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**entry, "kid": "k"}]}))
        jwt_settings = {**jwt_settings, "jwks_file": str(tmp_path / "jwks.json")}
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"settings": {"auth": {"enabled": True, "jwt": jwt_settings}}, "models": {}}))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(config), "--check"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"MODELYARD_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 2 and message in done.stderr, done.stderr
