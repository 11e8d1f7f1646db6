"""API keys, roles, scopes and per-model access (settings.auth), through a real
orchestrator and real fake services: every route times every kind of key,
the key lifecycle (shown once, stored hashed, revoked, rotated, made by the
CLI while the orchestrator runs), and the refusal to listen publicly with
auth off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.keys import KeyStore
from tests.conftest import ROOT, fake_model, wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
CONFIG = {
    "settings": {"auth": {"enabled": True}},
    "models": {
        "chat": fake_model(aliases=["chat-alias"]),
        "other": fake_model(),
        "emb": fake_model(type="embedding"),
    },
}


def keys_cli(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(state), *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def cli_key(state: Path, *argv: str) -> dict[str, Any]:
    done = keys_cli(state, "--json", "create", *argv)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Setup:
    def __init__(self, orch: Any, keys: dict[str, str], ids: dict[str, str]) -> None:
        self.orch, self.keys, self.ids = orch, keys, ids

    def call(self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> httpx.Response:
        with self.orch.client(timeout=60) as client:
            return client.request(method, path, json=body, headers=headers)


@pytest.fixture(scope="module")
def setup(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    state = tmp_path_factory.mktemp("auth") / "state"
    root = cli_key(state, "--name", "root", "--role", "admin")
    orch = module_orchestrator(CONFIG, state_dir=state)
    admin = {"Authorization": f"Bearer {root['key']}"}
    keys, ids = {"admin": root["key"]}, {"admin": root["id"]}
    specs = {
        "viewer": {"role": "viewer"},
        "viewer+inference": {"role": "viewer", "scopes": ["inference"]},
        "member": {"role": "member"},
        "limited": {"role": "member", "models": ["chat-alias"]},
        "expired": {"role": "admin", "expires_in": 1},
        "revoked": {"role": "admin"},
    }
    with orch.client() as client:
        for name, spec in specs.items():
            made = client.post("/admin/keys", json={"name": name, **spec}, headers=admin)
            assert made.status_code == 201, made.text
            keys[name], ids[name] = made.json()["key"], made.json()["id"]
        assert client.delete(f"/admin/keys/{ids['revoked']}", headers=admin).status_code == 200
    time.sleep(1.1)  # the expired key's second runs out
    return Setup(orch, keys, ids)


# (method, path, body, scope needed, model asked for, status once allowed)
ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "chat", **CHAT}, "inference", "chat", 200),
    ("POST", "/v1/chat/completions", {"model": "chat-alias", **CHAT}, "inference", "chat", 200),
    ("POST", "/v1/completions", {"model": "other", "prompt": "hi"}, "inference", "other", 200),
    ("POST", "/v1/embeddings", {"model": "emb", "input": "hi"}, "inference", "emb", 200),
    ("POST", "/v1/chat/completions", {"model": "nonexistent", **CHAT}, "inference", "nonexistent", 404),
    ("GET", "/v1/models", None, "models:read", None, 200),
    ("GET", "/metrics", None, "metrics:read", None, 200),
    ("GET", "/admin/services", None, "services:read", None, 200),  # admin:read implies it
    ("HEAD", "/admin/services", None, "services:read", None, 405),
    ("GET", "/admin/services/chat", None, "services:read", None, 200),
    ("GET", "/admin/services/chat/logs", None, "admin:read", None, 200),  # logs are not the service list
    ("POST", "/admin/services/chat/load", None, "admin:models", None, 200),
    ("GET", "/admin/usage", None, "admin:read", None, 200),
    ("GET", "/admin/audit", None, "audit:read", None, 200),
    ("GET", "/admin/audit/verify", None, "audit:read", None, 200),
    ("GET", "/admin/captures", None, "captures:read", None, 404),  # capture is off here: 404 capture_disabled
    ("GET", "/drift/monitors", None, "drift:read", None, 404),  # drift is off here: 404 drift_disabled
    ("DELETE", "/drift/monitors/m", None, "drift:write", None, 404),
    ("GET", "/simulator/hardware", None, "simulator:read", None, 404),  # the simulator is off here
    ("POST", "/simulator/run", {}, "simulator:write", None, 404),
    ("GET", "/admin/keys", None, "admin:keys", None, 200),
    ("GET", "/admin/keys/", None, "admin:keys", None, 307),  # FastAPI's redirect, only once allowed
    ("OPTIONS", "/admin/keys", None, "admin:keys", None, 405),
    ("GET", "//admin/keys", None, "admin:keys", None, 404),
    ("GET", "/nowhere", None, "admin:keys", None, 404),  # unknown paths need the strictest scope
    ("GET", "/health", None, None, None, 200),
    ("GET", "/ready", None, None, None, 200),
    ("GET", "/openapi.json", None, None, None, 200),
]
SCOPES_OF = {
    "viewer": {"models:read"},
    "viewer+inference": {"models:read", "inference"},
    "member": {"models:read", "inference"},
    "member (x-api-key)": {"models:read", "inference"},
    "limited": {"models:read", "inference"},
    "admin": {"models:read", "inference", "metrics:read", "admin:read", "admin:models", "admin:keys", "audit:read",
              "captures:read", "drift:read", "drift:write", "simulator:read", "simulator:write", "services:read"},
}
REJECTED = {
    "missing": "missing_api_key",
    "other scheme": "invalid_api_key",
    "malformed": "invalid_api_key",
    "unknown": "invalid_api_key",
    "wrong secret": "invalid_api_key",
    "expired": "expired_api_key",
    "revoked": "revoked_api_key",
}
WHO = [*REJECTED, *SCOPES_OF]


def headers_for(setup: Setup, who: str) -> dict[str, str]:
    if who == "missing":
        return {}
    if who == "other scheme":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if who == "malformed":
        return {"Authorization": "Bearer sk-not-one-of-ours"}
    if who == "unknown":
        return {"Authorization": "Bearer my-0123456789ab-" + "A" * 43}
    if who == "wrong secret":
        return {"Authorization": f"Bearer my-{setup.ids['member']}-" + "B" * 43}
    if who == "member (x-api-key)":
        return {"x-api-key": setup.keys["member"]}
    return {"Authorization": f"Bearer {setup.keys[who]}"}


def expected(who: str, scope: str | None, model: str | None, allowed: int) -> tuple[int, str | None]:
    if scope is None:
        return allowed, None
    if who in REJECTED:
        return 401, REJECTED[who]
    if scope not in SCOPES_OF[who]:
        return 403, "insufficient_scope"
    if who == "limited" and model not in (None, "chat"):
        return 403, "model_not_allowed"  # even for a model that does not exist: nothing to learn
    return allowed, None


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize(("method", "path", "body", "scope", "model", "allowed"), ROUTES,
                         ids=[f"{r[0]} {r[1]} {r[4] or ''}".strip() for r in ROUTES])
def test_authorization_matrix(setup: Setup, who, method, path, body, scope, model, allowed) -> None:
    response = setup.call(method, path, body, headers_for(setup, who))
    status, code = expected(who, scope, model, allowed)
    assert response.status_code == status, response.text
    if code is not None and method != "HEAD":
        assert response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_limited_to_models_sees_only_those(setup: Setup) -> None:
    listed = setup.call("GET", "/v1/models", None, headers_for(setup, "limited")).json()["data"]
    assert [m["id"] for m in listed] == ["chat"]
    everything = setup.call("GET", "/v1/models", None, headers_for(setup, "member")).json()["data"]
    assert {m["id"] for m in everything} == {"chat", "other", "emb"}


def test_a_key_is_shown_once_and_stored_only_as_a_hash(setup: Setup) -> None:
    admin = headers_for(setup, "admin")
    made = setup.call("POST", "/admin/keys", {"name": "once", "owner": "qa"}, admin)
    assert made.status_code == 201 and made.json()["key"].startswith("my-")
    secret, key_id = made.json()["key"], made.json()["id"]
    shown = setup.call("GET", f"/admin/keys/{key_id}", None, admin).json()
    assert shown["owner"] == "qa" and shown["state"] == "active" and "key" not in shown and "hash" not in shown
    listing = setup.call("GET", "/admin/keys", None, admin).text
    assert secret not in listing and secret.split("-", 2)[2] not in listing
    database = b"".join(path.read_bytes() for path in setup.orch.state_dir.glob("keys.db*"))
    assert secret.encode() not in database and secret.split("-", 2)[2].encode() not in database


def test_rotation_replaces_a_key_at_once_or_after_a_grace_period(setup: Setup) -> None:
    admin = headers_for(setup, "admin")
    headers = {"Authorization": ""}
    first = setup.call("POST", "/admin/keys", {"name": "rotating", "models": ["chat"]}, admin).json()
    rotated = setup.call("POST", f"/admin/keys/{first['id']}/rotate", None, admin)
    assert rotated.status_code == 201, rotated.text
    second = rotated.json()
    assert second["models"] == ["chat"] and second["replaces"]["replaced_by"] == second["id"]
    headers["Authorization"] = f"Bearer {first['key']}"
    old = setup.call("GET", "/v1/models", None, headers)
    assert old.status_code == 401 and old.json()["error"]["code"] == "revoked_api_key"
    headers["Authorization"] = f"Bearer {second['key']}"
    assert setup.call("GET", "/v1/models", None, headers).status_code == 200

    graceful = setup.call("POST", f"/admin/keys/{second['id']}/rotate?grace=3600", None, admin)
    assert graceful.status_code == 201 and graceful.json()["replaces"]["state"] == "active"
    assert setup.call("GET", "/v1/models", None, headers).status_code == 200  # still, for an hour
    again = setup.call("POST", f"/admin/keys/{first['id']}/rotate", None, admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "key_not_active"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "role": "owner"}, "role"),
        ({"name": "x", "scopes": ["everything"]}, "scopes.0"),
        ({"name": ""}, "name"),
        ({"name": "x", "expires_at": 1000.0}, "expires_at"),
        ({"name": "x", "expires_in": 10, "expires_at": 9e9}, "expires_at"),
        ({"name": "x", "models": [" "]}, "models"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_key_requests_are_400s(setup: Setup, body, param) -> None:
    response = setup.call("POST", "/admin/keys", body, headers_for(setup, "admin"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_admin_keys_cannot_mint_a_key_that_does_more_than_the_caller(setup: Setup) -> None:
    admin = headers_for(setup, "admin")
    minter = setup.call("POST", "/admin/keys", {"name": "minter", "role": "viewer", "scopes": ["admin:keys"]},
                        admin).json()
    mine = {"Authorization": f"Bearer {minter['key']}"}
    up = setup.call("POST", "/admin/keys", {"name": "up", "role": "admin"}, mine)
    assert up.status_code == 403 and up.json()["error"]["code"] == "insufficient_scope"
    assert "admin:models" in up.json()["error"]["message"]
    sideways = setup.call("POST", "/admin/keys", {"name": "side", "role": "viewer", "scopes": ["inference"]}, mine)
    assert sideways.status_code == 403
    assert setup.call("POST", "/admin/keys", {"name": "down", "role": "viewer"}, mine).status_code == 201
    member = setup.call("POST", "/admin/keys", {"name": "m", "role": "member"}, admin).json()
    assert setup.call("POST", f"/admin/keys/{member['id']}/rotate", None, mine).status_code == 403


@pytest.mark.parametrize(
    "body",
    [b'{"name": "x", "expires_in": Infinity}', b'{"name": "x", "expires_in": NaN}',
     b'{"name": "x", "expires_in": 1e12}', b'{"name": "x", "expires_at": 1e13}'],
)
def test_expiry_must_be_a_finite_time_within_ten_years(setup: Setup, body: bytes) -> None:
    with setup.orch.client() as client:
        response = client.post("/admin/keys", content=body,
                                headers={**headers_for(setup, "admin"), "content-type": "application/json"})
    assert response.status_code == 400, response.text


def test_a_revocation_by_another_process_is_never_undone_by_a_rotation(tmp_path: Path) -> None:
    api, cli = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    key, _ = api.create("k")  # both have seen it active
    cli.refresh()
    cli.revoke(key.id)
    with pytest.raises(ValueError, match="is revoked"):
        api.rotate(key.id, grace=3600)  # the API's cache still says active; the database does not
    api.refresh()
    assert api.get(key.id).state() == "revoked" and len(api.all()) == 1
    later, _ = api.create("l")
    cli.refresh()
    cli.revoke(later.id)
    assert api.revoke(later.id, time.time() + 3600).revoked <= time.time()  # an earlier revocation stays


def test_unknown_keys_are_404s(setup: Setup) -> None:
    for method, path in (("GET", "/admin/keys/0123456789ab"), ("DELETE", "/admin/keys/nope"),
                         ("POST", "/admin/keys/nope/rotate")):
        response = setup.call(method, path, None, headers_for(setup, "admin"))
        assert response.status_code == 404 and response.json()["error"]["code"] == "key_not_found"


def test_keys_made_and_revoked_by_the_cli_apply_to_the_running_orchestrator(setup: Setup) -> None:
    state = setup.orch.state_dir
    made = cli_key(state, "--name", "from-cli", "--role", "viewer")
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert wait_until(lambda: setup.call("GET", "/v1/models", None, headers).status_code == 200, 5)
    listed = keys_cli(state, "list")
    assert listed.returncode == 0 and made["id"] in listed.stdout and made["key"] not in listed.stdout
    assert keys_cli(state, "revoke", made["id"]).returncode == 0
    assert wait_until(lambda: setup.call("GET", "/v1/models", None, headers).status_code == 401, 5)
    missing = keys_cli(state, "revoke", "0123456789ab")
    assert missing.returncode == 1 and "no API key with id" in missing.stderr


def test_no_credential_reaches_an_answer_or_the_log(setup: Setup) -> None:
    # A wrong secret under a real id, a token-shaped string and a malformed key: each refused
    # in words that name at most the key's id, never what was presented.
    presented = [f"my-{setup.ids['member']}-" + "Z" * 43, "eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXNpZ25hdHVyZQ",
                 "sk-proj-this-is-somebody-elses-secret"]
    for credential in presented:
        for headers in ({"Authorization": f"Bearer {credential}"}, {"x-api-key": credential}):
            answer = setup.call("POST", "/v1/chat/completions", {"model": "chat", **CHAT}, headers)
            assert answer.status_code == 401
            assert credential not in answer.text and credential[-20:] not in answer.text
    setup.call("GET", "/v1/models", None, headers_for(setup, "member"))
    log = setup.orch.log()
    assert log  # the orchestrator did log
    for secret in [*setup.keys.values(), *presented]:
        assert secret not in log and secret[-20:] not in log


@pytest.mark.parametrize(
    ("host", "auth", "refused"),
    [
        ("0.0.0.0", {}, True),
        ("192.168.1.10", {}, True),
        ("models.example.com", {}, True),
        ("0.0.0.0", {"enabled": True}, False),
        ("0.0.0.0", {"insecure_public": True}, False),
        ("127.0.0.1", {}, False),
        ("::1", {}, False),
        ("localhost", {}, False),
    ],
)
def test_listening_publicly_needs_auth_or_an_explicit_insecure_setting(tmp_path: Path, host, auth, refused) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"settings": {"auth": auth}, "models": {}}))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(config), "--host", host, "--check"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"MODELYARD_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
    if refused:
        assert done.returncode == 2 and f"refusing to listen on {host} with auth off" in done.stderr
        assert "settings.auth.insecure_public" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
