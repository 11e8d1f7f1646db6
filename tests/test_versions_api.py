"""Model versions and aliases as clients use them, through a real
orchestrator: versions registered over /admin/registry, requests naming
`chat@production`, `chat:1.1.0` or `chat`, /v1/models listing what a key may
use, a key limited to one version's model, the history and audit trail, and
a version whose model left models.yaml."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import fake_model
from tests.support.api_errors import assert_error
from tests.test_limits import create_key

MODELS = {"chat-v1": fake_model(served_name="served-v1"), "chat-v2": fake_model(served_name="served-v2")}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class Yard:
    def __init__(self, orch: Any, admin: str) -> None:
        self.orch, self.admin = orch, {"Authorization": f"Bearer {admin}"}

    def call(self, method: str, path: str, key: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.orch.url + path, headers=key or self.admin, timeout=30, **kwargs)

    def served(self, model: str, key: dict[str, str] | None = None) -> httpx.Response:
        return self.call("POST", "/v1/chat/completions", key, json={"model": model, **CHAT})


@pytest.fixture(scope="module")
def yard(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Yard:
    state = tmp_path_factory.mktemp("versions") / "state"
    admin = create_key(state, "--role", "admin", "--name", "release-bot")
    orch = module_orchestrator({"settings": {"auth": {"enabled": True}}, "models": MODELS}, state_dir=state)
    yard = Yard(orch, admin["key"])
    first = yard.call("POST", "/admin/registry/models/chat/versions",
                      json={"version": "1.0.0", "model": "chat-v1", "metadata": {"eval_accuracy": 0.81}})
    assert first.status_code == 201, first.text
    second = yard.call("POST", "/admin/registry/models/chat/versions",
                       json={"version": "1.1.0", "model": "chat-v2", "parent": "1.0.0",
                             "metadata": {"eval_accuracy": 0.84, "notes": "more data"}})
    assert second.status_code == 201, second.text
    return yard


def test_a_version_is_kept_with_its_model_parent_metadata_and_author(yard: Yard) -> None:
    got = yard.call("GET", "/admin/registry/models/chat/versions/1.1.0").json()
    assert (got["model"], got["parent"], got["created_by"]) == ("chat-v2", "1.0.0", "release-bot")
    assert got["metadata"] == {"eval_accuracy": 0.84, "notes": "more data"}
    assert got["lineage"] == ["1.1.0", "1.0.0"]
    listed = yard.call("GET", "/admin/registry/models/chat").json()
    assert [v["version"] for v in listed["versions"]] == ["1.1.0", "1.0.0"]


def test_requests_name_a_version_an_alias_or_the_model(yard: Yard) -> None:
    assert yard.served("chat:1.0.0").json()["model"] == "served-v1"
    assert yard.served("chat:1.1.0").json()["model"] == "served-v2"
    assert yard.served("chat@latest").json()["model"] == "served-v2"
    assert yard.served("chat").json()["model"] == "served-v2"  # no @production yet: @latest
    moved = yard.call("PUT", "/admin/registry/models/chat/aliases/production", json={"version": "1.0.0"})
    assert moved.status_code == 200 and moved.json()["previous"] is None
    assert yard.served("chat").json()["model"] == "served-v1"  # @production from now on
    assert yard.served("chat@production").json()["model"] == "served-v1"
    assert_error(yard.served("chat@staging"), 404, "model", "alias_not_found")
    assert_error(yard.served("chat:9.9.9"), 404, "model", "version_not_found")
    assert_error(yard.served("nothing@production"), 404, "model", "model_not_found")


def test_v1_models_lists_versions_and_aliases_a_key_may_use(yard: Yard) -> None:
    yard.call("PUT", "/admin/registry/models/chat/aliases/staging", json={"version": "1.1.0"})
    listed = {m["id"]: m for m in yard.call("GET", "/v1/models").json()["data"]}
    assert listed["chat"]["versions"] == ["1.1.0", "1.0.0"]
    assert listed["chat"]["aliases"]["latest"] == "1.1.0" and listed["chat"]["aliases"]["staging"] == "1.1.0"

    made = yard.call("POST", "/admin/keys", json={"name": "v1-only", "role": "member", "models": ["chat-v1"]})
    limited = {"Authorization": f"Bearer {made.json()['key']}"}
    seen = {m["id"]: m for m in yard.call("GET", "/v1/models", limited).json()["data"]}
    assert seen["chat"]["versions"] == ["1.0.0"] and "staging" not in seen["chat"]["aliases"]
    assert yard.served("chat:1.0.0", limited).status_code == 200
    assert_error(yard.served("chat:1.1.0", limited), 403, "model", "model_not_allowed")


def test_a_key_listing_a_model_reaches_only_what_it_lists(yard: Yard) -> None:
    """A listed models.yaml model covers the versions it serves, and nothing else; a listed registered
    name covers its versions and aliases; a missing version is a 403 like any name it does not list."""
    yard.call("PUT", "/admin/registry/models/chat/aliases/staging", json={"version": "1.1.0"})
    v1_only = {"Authorization": "Bearer " + yard.call("POST", "/admin/keys", json={
        "name": "v1", "role": "member", "models": ["chat-v1"]}).json()["key"]}
    assert yard.served("chat:1.0.0", v1_only).status_code == 200
    for name in ("chat@staging", "chat@missing", "chat:9.9.9", "chat-v2"):
        assert_error(yard.served(name, v1_only), 403, "model", "model_not_allowed")
    by_name = {"Authorization": "Bearer " + yard.call("POST", "/admin/keys", json={
        "name": "chat-users", "role": "member", "models": ["chat"]}).json()["key"]}
    assert yard.served("chat@staging", by_name).json()["model"] == "served-v2"
    assert yard.served("chat:1.0.0", by_name).json()["model"] == "served-v1"
    assert_error(yard.served("chat-v2", by_name), 403, "model", "model_not_allowed")  # not the model behind it
    listed = {m["id"]: m for m in yard.call("GET", "/v1/models", by_name).json()["data"]}
    assert set(listed) == {"chat"} and listed["chat"]["versions"] == ["1.1.0", "1.0.0"]


def test_a_limited_key_cannot_point_a_name_at_a_model_it_may_not_use(yard: Yard) -> None:
    made = yard.call("POST", "/admin/keys", json={"name": "team-admin", "role": "admin", "models": ["chat-v1"]})
    team = {"Authorization": f"Bearer {made.json()['key']}"}
    refused = yard.call("POST", "/admin/registry/models/team-bot/versions", team,
                        json={"version": "1.0.0", "model": "chat-v2"})
    assert_error(refused, 403, "model", "model_not_allowed")
    assert yard.call("POST", "/admin/registry/models/team-bot/versions", team,
                     json={"version": "1.0.0", "model": "chat-v1"}).status_code == 201
    assert_error(yard.call("PUT", "/admin/registry/models/chat/aliases/production", team, json={"version": "1.1.0"}),
                 403, "model", "model_not_allowed")


def test_metadata_nested_too_deep_is_refused_and_breaks_nothing(yard: Yard) -> None:
    deep: Any = "leaf"
    for _ in range(600):
        deep = [deep]
    refused = yard.call("POST", "/admin/registry/models/deep/versions",
                        json={"version": "1.0.0", "model": "chat-v1", "metadata": {"a": deep}})
    assert_error(refused, 400, "metadata", "invalid_metadata")
    assert yard.call("GET", "/v1/models").status_code == 200


def test_bad_registrations_are_refused_precisely(yard: Yard) -> None:
    def create(name: str, **body: Any) -> httpx.Response:
        return yard.call("POST", f"/admin/registry/models/{name}/versions", json=body)

    assert_error(create("chat", version="1.0", model="chat-v1"), 400, "version", "invalid_version")
    assert_error(create("chat", version="1.0.0", model="chat-v1"), 409, "version", "version_exists")
    assert_error(create("chat", version="2.0.0", model="nope"), 400, "model", "unknown_model")
    assert_error(create("chat", version="2.0.0", model="chat-v1", parent="0.9.0"), 404, "parent", "version_not_found")
    assert_error(create("chat-v1", version="1.0.0", model="chat-v1"), 409, None, "name_taken")
    assert_error(yard.call("PUT", "/admin/registry/models/chat/aliases/latest", json={"version": "1.0.0"}), 400,
                 "alias", "reserved_alias")
    assert_error(yard.call("PUT", "/admin/registry/models/chat/aliases/canary", json={"version": "3.0.0"}), 404,
                 "version", "version_not_found")
    member = yard.call("POST", "/admin/keys", json={"name": "m", "role": "member"}).json()["key"]
    assert_error(yard.call("POST", "/admin/registry/models/chat/versions", {"Authorization": f"Bearer {member}"},
                           json={"version": "5.0.0", "model": "chat-v1"}), 403, None, "insufficient_scope")


def test_every_change_is_in_the_history_and_the_audit_log(yard: Yard) -> None:
    yard.call("PUT", "/admin/registry/models/chat/aliases/production", json={"version": "1.0.0"})
    yard.call("PUT", "/admin/registry/models/chat/aliases/production", json={"version": "1.1.0"})
    history = yard.call("GET", "/admin/registry/history", params={"name": "chat"}).json()["data"]
    move = next(e for e in history if e["action"] == "alias.set" and e["alias"] == "production")
    assert (move["version"], move["previous"], move["actor"]) == ("1.1.0", "1.0.0", "release-bot")
    assert any(e["action"] == "version.create" and e["version"] == "1.0.0" for e in history)
    entries = yard.call("GET", "/admin/audit", params={"format": "json"}).json()["entries"]
    assert any(e["action"] == "PUT /admin/registry/models/chat/aliases/production" and e["status"] == 200
               and e["actor"] == "release-bot" for e in entries)


def test_a_version_whose_model_left_models_yaml_says_so(yard: Yard) -> None:
    yard.call("POST", "/admin/registry/models/tmp/versions", json={"version": "0.1.0", "model": "chat-v2"})
    yard.orch.config_path.write_text(yaml.safe_dump({"settings": {"auth": {"enabled": True}},
                                                     "models": {"chat-v1": MODELS["chat-v1"]}}))
    try:
        assert yard.call("POST", "/admin/reload").status_code == 200
        body = assert_error(yard.served("tmp:0.1.0"), 404, "model", "model_not_found")
        assert "chat-v2" in body["message"] and "no longer" in body["message"]
        assert "tmp" not in {m["id"] for m in yard.call("GET", "/v1/models").json()["data"]}
    finally:
        yard.orch.config_path.write_text(yaml.safe_dump({"settings": {"auth": {"enabled": True}}, "models": MODELS}))
        assert yard.call("POST", "/admin/reload").status_code == 200
