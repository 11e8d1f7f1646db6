"""A/B tests and canary rollouts as an operator runs them, through a real
orchestrator and real fake-model processes: a good canary walks its stages
and moves @production; a faulty one (a service failing half its requests)
rolls back by itself; an A/B test with a known effect promotes the right
winner and one without an effect declares none; user feedback per answer;
pause, resume and abort; a rollout that survives a restart; metrics, audit,
and the refusals for bad requests."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import pytest

from tests.conftest import fake_model, wait_until
from tests.support.api_errors import assert_error
from tests.test_limits import create_key

MODELS = {
    "chat-v1": fake_model(served_name="served-v1"),
    "chat-v2": fake_model(served_name="served-v2"),
    "chat-bad": fake_model("--fail-fraction 0.5", served_name="served-bad"),
}
SERVED = {"served-v1": "chat-v1", "served-v2": "chat-v2"}
_users = itertools.count()


class Yard:
    def __init__(self, orch: Any) -> None:
        self.orch = orch

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.orch.url + path, timeout=30, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()  # type: ignore[no-any-return]

    def register(self, name: str, versions: dict[str, str], production: str) -> None:
        for version, model in versions.items():
            self.ok("POST", f"/admin/registry/models/{name}/versions", 201, json={"version": version, "model": model})
        self.ok("PUT", f"/admin/registry/models/{name}/aliases/production", json={"version": production})

    def ask(self, model: str, user: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if user is not None:
            body["user"] = user
        return self.call("POST", "/v1/chat/completions", json=body)

    def production(self, name: str) -> str:
        return str(self.ok("GET", f"/admin/registry/models/{name}")["aliases"]["production"])

    def drive(self, model: str, done: Any, timeout: float = 90) -> list[httpx.Response]:
        """Requests from new users, a few at a time, until done() is true."""
        answers: list[httpx.Response] = []
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the experiment did not get there in time"
            answers += [self.ask(model, f"user-{next(_users)}") for _ in range(5)]
        return answers


@pytest.fixture(scope="module")
def yard(module_orchestrator) -> Yard:
    return Yard(module_orchestrator({"models": MODELS}))


def rollout_status(yard: Yard, rollout_id: str) -> str:
    return str(yard.ok("GET", f"/admin/rollouts/{rollout_id}")["status"])


def test_a_good_canary_walks_its_stages_and_moves_production(yard: Yard) -> None:
    yard.register("good", {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}, production="1.0.0")
    rollout = yard.ok("POST", "/admin/rollouts", 201, json={
        "name": "good", "version": "1.1.0", "stages": [25, 50, 100], "dwell_seconds": 1, "min_requests": 5})
    assert (rollout["status"], rollout["stable"], rollout["percent"]) == ("running", "1.0.0", 25)

    answers = yard.drive("good", lambda: rollout_status(yard, rollout["id"]) != "running")
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    assert {a.json()["model"] for a in answers} == {"served-v1", "served-v2"}  # both versions served meanwhile

    done = yard.ok("GET", f"/admin/rollouts/{rollout['id']}")
    assert done["status"] == "completed", done
    assert [e["action"] for e in done["events"]] == ["start", "advance", "advance", "complete"]
    assert [(e["detail"].get("from"), e["detail"].get("to")) for e in done["events"][1:3]] == [(25, 50), (50, 100)]
    assert yard.production("good") == "1.1.0"
    assert yard.ask("good").json()["model"] == "served-v2"
    moved = yard.ok("GET", "/admin/registry/history", params={"name": "good"})["data"][0]
    assert (moved["action"], moved["version"], moved["previous"]) == ("alias.set", "1.1.0", "1.0.0")
    assert moved["actor"] == f"rollout {rollout['id']}"


def test_a_faulty_canary_rolls_back_by_itself(yard: Yard) -> None:
    yard.register("faulty", {"1.0.0": "chat-v1", "2.0.0": "chat-bad"}, production="1.0.0")
    rollout = yard.ok("POST", "/admin/rollouts", 201, json={
        "name": "faulty", "version": "2.0.0", "stages": [50, 100], "dwell_seconds": 3600, "min_requests": 10})

    answers = yard.drive("faulty", lambda: rollout_status(yard, rollout["id"]) != "running")
    assert any(a.status_code == 500 for a in answers)  # the canary's failures reached some users

    done = yard.ok("GET", f"/admin/rollouts/{rollout['id']}")
    assert done["status"] == "rolled_back", done
    assert "error rate" in done["reason"] and done["reason"].startswith("rolled back at 50%")
    assert done["events"][-1]["action"] == "rollback"
    assert done["events"][-1]["actor"] == f"rollout {rollout['id']}"
    assert yard.production("faulty") == "1.0.0"  # the alias never moved
    after = [yard.ask("faulty", f"user-{next(_users)}") for _ in range(20)]
    assert [a.status_code for a in after] == [200] * 20
    assert {a.json()["model"] for a in after} == {"served-v1"}

    audit = yard.ok("GET", "/admin/audit", params={"kind": "admin"})["entries"]
    steps = [e for e in audit if e["action"] == "rollout.rollback"]
    assert steps and steps[-1]["model"] == "faulty" and steps[-1]["detail"]["experiment"] == rollout["id"]


def test_an_ab_test_with_a_known_effect_promotes_the_winner(yard: Yard) -> None:
    # The control fails half of its requests; the treatment never does.
    yard.register("ab-effect", {"1.0.0": "chat-bad", "2.0.0": "chat-v2"}, production="1.0.0")
    test = yard.ok("POST", "/admin/experiments", 201, json={
        "name": "ab-effect", "variants": [{"version": "1.0.0"}, {"version": "2.0.0"}],
        "metric": "success_rate", "min_samples": 40, "auto_promote": True})

    def ended() -> bool:
        return yard.ok("GET", f"/admin/experiments/{test['id']}")["status"] != "running"

    yard.drive("ab-effect", ended)
    done = yard.ok("GET", f"/admin/experiments/{test['id']}")
    assert done["status"] == "concluded", done
    assert (done["decision"]["status"], done["decision"]["winner"]) == ("winner", "2.0.0")
    assert [e["action"] for e in done["events"]] == ["start", "promote"]
    assert done["decision"]["comparisons"][0]["p_value"] < 0.05
    assert yard.production("ab-effect") == "2.0.0"
    control = done["variants"][0]
    assert control["control"] and control["requests"] >= 40 and 0.2 < control["error_rate"] < 0.8


def test_an_ab_test_without_an_effect_declares_no_winner_and_is_sticky(yard: Yard) -> None:
    yard.register("ab-same", {"1.0.0": "chat-v1", "1.0.1": "chat-v2"}, production="1.0.0")
    test = yard.ok("POST", "/admin/experiments", 201, json={
        "name": "ab-same", "variants": [{"version": "1.0.0", "weight": 1}, {"version": "1.0.1", "weight": 1}],
        "metric": "success_rate", "min_samples": 30, "auto_promote": True})

    # The same user always gets the same version.
    for user in ("ada", "grace", "linus"):
        assert len({yard.ask("ab-same", user).json()["model"] for _ in range(6)}) == 1
    # At the horizon it decides once, finds nothing, and ends without moving the alias.
    yard.drive("ab-same", lambda: yard.ok("GET", f"/admin/experiments/{test['id']}")["status"] != "running")
    state = yard.ok("GET", f"/admin/experiments/{test['id']}")
    assert state["status"] == "concluded"
    assert (state["decision"]["status"], state["decision"]["winner"]) == ("no_winner", None)
    assert all(v["requests"] >= 30 for v in state["variants"])
    assert [e["action"] for e in state["events"]] == ["start", "decide"]
    assert yard.production("ab-same") == "1.0.0"
    assert_error(yard.call("POST", f"/admin/experiments/{test['id']}/stop", json={}), 409, None,
                 "experiment_ended")

    # Stopped early, by a person: the alias stays.
    early = yard.ok("POST", "/admin/experiments", 201, json={
        "name": "ab-same", "variants": [{"version": "1.0.0"}, {"version": "1.0.1"}], "min_samples": 1000})
    assert yard.ok("POST", f"/admin/experiments/{early['id']}/stop")["status"] == "stopped"
    assert yard.production("ab-same") == "1.0.0"


def test_feedback_is_counted_for_the_version_that_answered(yard: Yard) -> None:
    yard.register("rated", {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}, production="1.0.0")
    test = yard.ok("POST", "/admin/experiments", 201, json={
        "name": "rated", "variants": [{"version": "1.0.0"}, {"version": "1.1.0"}], "metric": "feedback",
        "min_samples": 1000})  # runs on: a person ends it below
    given = {"served-v1": 0, "served-v2": 0}
    for _ in range(30):
        answer = yard.ask("rated", f"user-{next(_users)}")
        served = answer.json()["model"]
        score = 1.0 if served == "served-v2" else 0.0  # users like 1.1.0
        got = yard.ok("POST", "/v1/feedback", 201, json={"request_id": answer.headers["x-request-id"],
                                                          "score": score, "comment": "thumbs"})
        assert (got["experiment"], got["version"]) == (test["id"], "1.1.0" if served == "served-v2" else "1.0.0")
        given[served] += 1
    state = yard.ok("GET", f"/admin/experiments/{test['id']}")
    counts = {v["version"]: (v["feedback"], v["feedback_mean"]) for v in state["variants"]}
    assert counts == {"1.0.0": (given["served-v1"], 0.0 if given["served-v1"] else None),
                      "1.1.0": (given["served-v2"], 1.0 if given["served-v2"] else None)}
    assert state["decision"]["status"] == "collecting" and state["decision"]["winner"] is None
    if min(given.values()) >= 2:  # the interim comparison already leans the users' way
        assert state["decision"]["comparisons"][0]["better"] is True

    # One score per answer; an unknown request; a score out of range.
    rid = yard.ask("rated").headers["x-request-id"]
    yard.ok("POST", "/v1/feedback", 201, json={"request_id": rid, "score": 0.5})
    assert_error(yard.call("POST", "/v1/feedback", json={"request_id": rid, "score": 1}), 409, "request_id",
                 "feedback_exists")
    assert_error(yard.call("POST", "/v1/feedback", json={"request_id": "nope", "score": 1}), 404, "request_id",
                 "request_not_found")
    assert_error(yard.call("POST", "/v1/feedback", json={"request_id": rid, "score": 2}), 400, "score")
    yard.ok("POST", f"/admin/experiments/{test['id']}/stop", json={"promote": "1.1.0"})
    assert yard.production("rated") == "1.1.0"


def test_metrics_show_running_experiments(yard: Yard) -> None:
    yard.register("watched", {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}, production="1.0.0")
    rollout = yard.ok("POST", "/admin/rollouts", 201, json={"name": "watched", "version": "1.1.0",
                                                            "stages": [10, 100], "dwell_seconds": 3600})
    for _ in range(10):
        assert yard.ask("watched", f"user-{next(_users)}").status_code == 200
    text = yard.call("GET", "/metrics").text
    assert (f'modelyard_rollout_canary_percent{{alias="production",model="watched",rollout="{rollout["id"]}",'
            f'version="1.1.0"}} 10.0') in text
    counted = [line for line in text.splitlines()
               if line.startswith("modelyard_experiment_requests_total") and rollout["id"] in line
               and 'outcome="success"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 10
    assert 'modelyard_experiment_steps_total{action="start",kind="rollout"}' in text
    yard.ok("POST", f"/admin/rollouts/{rollout['id']}/abort")


def test_bad_requests_are_refused_precisely(yard: Yard) -> None:
    yard.register("strict", {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}, production="1.0.0")
    start = {"name": "strict", "version": "1.1.0"}
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "stages": [10, 50]}), 400, "stages")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "stages": [50, 10, 100]}), 400, "stages")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "dwell_seconds": -1}), 400, "dwell_seconds")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "name": "nobody"}), 404, "name",
                 "registered_model_not_found")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "version": "9.9.9"}), 404, "version",
                 "version_not_found")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "version": "1.0.0"}), 409, "version",
                 "already_serving")
    assert_error(yard.call("POST", "/admin/rollouts", json={**start, "alias": "staging"}), 409, "alias",
                 "alias_not_set")
    assert_error(yard.call("POST", "/admin/experiments", json={
        "name": "strict", "variants": [{"version": "1.0.0"}, {"version": "1.0.0"}]}), 400, "variants",
        "duplicate_variant")
    assert_error(yard.call("POST", "/admin/experiments", json={
        "name": "strict", "variants": [{"version": "1.0.0"}, {"version": "1.1.0", "weight": 0}]}),
        400, "variants.1.weight")
    assert_error(yard.call("POST", "/admin/experiments", json={
        "name": "strict", "variants": [{"version": "1.0.0"}, {"version": "1.1.0"}], "metric": "vibes"}),
        400, "metric")

    running = yard.ok("POST", "/admin/rollouts", 201, json={**start, "dwell_seconds": 3600})
    assert_error(yard.call("POST", "/admin/rollouts", json=start), 409, "alias", "experiment_running")
    assert_error(yard.call("PUT", "/admin/registry/models/strict/aliases/production", json={"version": "1.1.0"}),
                 409, "alias", "experiment_running")
    assert_error(yard.call("POST", "/admin/rollouts/rollout_nope/pause"), 404, None, "rollout_not_found")
    assert yard.call("POST", f"/admin/rollouts/{running['id']}/jump").status_code in (400, 404)
    yard.ok("POST", f"/admin/rollouts/{running['id']}/abort")
    assert_error(yard.call("POST", f"/admin/rollouts/{running['id']}/resume"), 409, None, "experiment_ended")
    assert yard.production("strict") == "1.0.0"


def test_pause_resume_abort_and_a_restart_keep_the_rollout(orchestrator, tmp_path) -> None:
    config = {"models": MODELS}
    state = tmp_path / "kept-state"
    yard = Yard(orchestrator(config, state_dir=state))
    yard.register("kept", {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}, production="1.0.0")
    rollout = yard.ok("POST", "/admin/rollouts", 201, json={
        "name": "kept", "version": "1.1.0", "stages": [50, 100], "dwell_seconds": 1, "min_requests": 3})
    paused = yard.ok("POST", f"/admin/rollouts/{rollout['id']}/pause")
    assert (paused["status"], paused["percent"]) == ("paused", 50)
    for _ in range(20):  # a paused rollout holds its share and does not advance
        assert yard.ask("kept", f"user-{next(_users)}").status_code == 200
    time.sleep(2)
    before = yard.ok("GET", f"/admin/rollouts/{rollout['id']}")
    assert (before["status"], before["stage"]) == ("paused", 0)
    assert before["current_stage"]["canary"]["requests"] + before["current_stage"]["stable"]["requests"] == 20

    yard.orch.stop()
    assert wait_until(lambda: yard.orch.process.poll() is not None, 30)
    yard = Yard(orchestrator(config, state_dir=state))
    after = yard.ok("GET", f"/admin/rollouts/{rollout['id']}")
    assert (after["status"], after["stage"], after["stable"]) == ("paused", 0, "1.0.0")
    assert after["current_stage"] == before["current_stage"]  # the counts came back with it

    resumed = yard.ok("POST", f"/admin/rollouts/{rollout['id']}/resume")
    assert resumed["status"] == "running"
    assert wait_until(lambda: rollout_status(yard, rollout["id"]) != "running" or
                      yard.ok("GET", f"/admin/rollouts/{rollout['id']}")["stage"] == 1, 30)
    aborted = yard.ok("POST", f"/admin/rollouts/{rollout['id']}/abort")
    assert aborted["status"] == "aborted"
    assert [e["action"] for e in yard.ok("GET", f"/admin/rollouts/{rollout['id']}")["events"]] == [
        "start", "pause", "resume", "advance", "abort"]
    assert yard.production("kept") == "1.0.0"
    assert {yard.ask("kept", f"user-{next(_users)}").json()["model"] for _ in range(10)} == {"served-v1"}


@pytest.fixture(scope="module")
def guarded(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Yard, dict[str, str]]:
    state = tmp_path_factory.mktemp("guarded") / "state"
    admin = create_key(state, "--role", "admin", "--name", "release-bot")
    orch = module_orchestrator({"settings": {"auth": {"enabled": True}}, "models": MODELS}, state_dir=state)
    return Yard(orch), {"Authorization": f"Bearer {admin['key']}"}


def key_for(yard: Yard, admin: dict[str, str], **fields: Any) -> dict[str, str]:
    made = yard.ok("POST", "/admin/keys", 201, headers=admin, json={"name": "k", "role": "member", **fields})
    return {"Authorization": f"Bearer {made['key']}"}


def test_with_auth_scopes_feedback_owners_and_model_limits_hold(guarded: tuple[Yard, dict[str, str]]) -> None:
    yard, admin = guarded
    for version, model in {"1.0.0": "chat-v1", "1.1.0": "chat-v2"}.items():
        yard.ok("POST", "/admin/registry/models/chat/versions", 201, headers=admin,
                json={"version": version, "model": model})
    yard.ok("PUT", "/admin/registry/models/chat/aliases/production", headers=admin, json={"version": "1.0.0"})
    member = key_for(yard, admin)
    start = {"name": "chat", "version": "1.1.0", "stages": [50, 100], "dwell_seconds": 3600}
    assert_error(yard.call("POST", "/admin/rollouts", headers=member, json=start), 403, None)
    assert_error(yard.call("GET", "/admin/rollouts", headers=member), 403, None)
    rollout = yard.ok("POST", "/admin/rollouts", 201, headers=admin, json=start)
    assert rollout["created_by"] == "release-bot"

    # A key rates the answers it got, not another key's; an admin rates any.
    other = key_for(yard, admin)
    mine = yard.call("POST", "/v1/chat/completions", headers=member,
                     json={"model": "chat", "user": "u1", "messages": [{"role": "user", "content": "hi"}]})
    rid = mine.headers["x-request-id"]
    assert_error(yard.call("POST", "/v1/feedback", headers=other, json={"request_id": rid, "score": 1}), 404,
                 "request_id", "request_not_found")
    assert_error(yard.call("POST", "/v1/feedback", json={"request_id": rid, "score": 1}), 401, None)
    yard.ok("POST", "/v1/feedback", 201, headers=member, json={"request_id": rid, "score": 1})
    theirs = yard.call("POST", "/v1/chat/completions", headers=other,
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    yard.ok("POST", "/v1/feedback", 201, headers=admin, json={"request_id": theirs.headers["x-request-id"],
                                                               "score": 0})

    # A key that may use only the stable version's model is left out of the split: never the canary.
    v1_only = key_for(yard, admin, models=["chat-v1"])
    for i in range(20):
        answer = yard.call("POST", "/v1/chat/completions", headers=v1_only,
                           json={"model": "chat", "user": f"limited-{i}", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["model"] == "served-v1", answer.text
    # A key limited to one version's model may not steer a rollout that serves another.
    team = key_for(yard, admin, role="admin", models=["chat-v1"])
    assert_error(yard.call("POST", f"/admin/rollouts/{rollout['id']}/abort", headers=team), 403, "model",
                 "model_not_allowed")
    yard.ok("POST", f"/admin/rollouts/{rollout['id']}/abort", headers=admin)
