"""The rules of canary rollouts and A/B tests, and the controller that applies
them, as fast unit tests: no orchestrator, no sleeping. Every verdict is asked
for at an explicit `now`, outcomes are fed by hand, and the controller runs on
real sqlite files (experiments.db, registry.db) in tmp_path. The end-to-end
runs are in test_experiments.py, the statistics in test_experiment_stats.py."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.errors import ServiceError
from orchestrator.experiments.ab_test import AbTest, AbTestSpec
from orchestrator.experiments.base import Step
from orchestrator.experiments.canary import Rollout, RolloutSpec
from orchestrator.experiments.controller import Assignment, Experiments
from orchestrator.experiments.store import ExperimentStore
from orchestrator.versions import VersionStore

STABLE, CANARY, OTHER = "1.0.0", "1.1.0", "1.2.0"
T0 = 1_700_000_000.0  # when the hand-made rollouts' first stage started
NEVER = 7 * 86400  # the longest dwell a spec allows; no test waits it out: only gates end the stage
_request_ids = itertools.count()


# --- helpers ----------------------------------------------------------------


def make_rollout(**spec: Any) -> Rollout:
    """A running rollout of chat 1.1.0 over 1.0.0 (50% then 100% by default), its stage started at T0."""
    fields = {"name": "chat", "version": CANARY, "stages": [50, 100], "dwell_seconds": 60, "min_requests": 20,
              **spec}
    return Rollout(RolloutSpec(**fields), STABLE, 0, T0, id="rollout_test", status="running", created=T0,
                   created_by=None)


def feed(experiment: Rollout | AbTest, version: str, ok: int = 0, failed: int = 0, seconds: float = 0.1) -> None:
    for _ in range(ok):
        experiment.record(version, True, seconds, 10)
    for _ in range(failed):
        experiment.record(version, False, 0.0, None)


def make_ab(weights: tuple[float, float] = (1, 1), **spec: Any) -> AbTest:
    variants = [{"version": STABLE, "weight": weights[0]}, {"version": CANARY, "weight": weights[1]}]
    fields = {"name": "chat", "variants": variants, "min_samples": 100, **spec}
    return AbTest(AbTestSpec(**fields), id="ab_test", status="running", created=T0, created_by=None)


def open_experiments(path: Path, versions: VersionStore) -> Experiments:
    return Experiments(ExperimentStore(path / "experiments.db"), versions)


def start_rollout(experiments: Experiments, **spec: Any) -> Rollout:
    fields = {"name": "chat", "version": CANARY, "stages": [50, 100], "dwell_seconds": 60, "min_requests": 5, **spec}
    public = experiments.create_rollout(RolloutSpec(**fields), actor="alice")
    rollout = experiments.running[public["id"]]
    assert isinstance(rollout, Rollout)
    return rollout


def answer(experiments: Experiments, target: Rollout | AbTest, version: str, times: int, status: int = 200,
           seconds: float = 0.1) -> None:
    """times answers of version through the controller, each with a request id of its own."""
    for _ in range(times):
        experiments.finished(Assignment(target, version), f"req-{next(_request_ids)}", None, "chat", status,
                             seconds, 10)


def raises_service_error(call: Any, status: int, code: str) -> ServiceError:
    """call() raises ServiceError status with code."""
    with pytest.raises(ServiceError) as caught:
        call()
    error = caught.value
    assert (error.status, error.code) == (status, code), error
    return error


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[VersionStore]:
    """registry.db with chat 1.0.0 (chat-v1) and 1.1.0 (chat-v2), production at 1.0.0."""
    store = VersionStore(tmp_path / "registry.db")
    store.create_version("chat", STABLE, "chat-v1", actor="test")
    store.create_version("chat", CANARY, "chat-v2", actor="test")
    store.set_alias("chat", "production", STABLE, actor="test")
    yield store
    store.close()


@pytest.fixture
def experiments(tmp_path: Path, versions: VersionStore) -> Iterator[Experiments]:
    made = open_experiments(tmp_path, versions)
    yield made
    made.store.close()  # closing twice is harmless: the restart test closes it itself


# --- Rollout: the gates -----------------------------------------------------


def test_no_verdict_before_min_requests_even_when_every_canary_request_fails() -> None:
    rollout = make_rollout(dwell_seconds=0)
    feed(rollout, CANARY, failed=19)
    assert rollout.evaluate(T0 + 3600) is None
    feed(rollout, CANARY, failed=1)
    step = rollout.evaluate(T0 + 3600)
    assert step is not None
    assert (step.action, step.status, step.move_alias_to) == ("rollback", "rolled_back", None)
    rollout.apply(step, T0 + 3600)
    assert (rollout.status, rollout.active, rollout.ended) == ("rolled_back", False, T0 + 3600)
    assert rollout.reason is not None and rollout.reason.startswith("rolled back at 50%")


@pytest.mark.parametrize(("stable_failed", "canary_failed", "rolls_back"), [
    (0, 1, False),  # 5% over a 0% stable: exactly the allowed 5 points
    (0, 2, True),
    (2, 3, False),  # 15% over 10%
    (2, 4, True),
])
def test_error_rate_gate_allows_exactly_the_increase(stable_failed: int, canary_failed: int,
                                                     rolls_back: bool) -> None:
    rollout = make_rollout(dwell_seconds=NEVER)
    feed(rollout, STABLE, ok=20 - stable_failed, failed=stable_failed)
    feed(rollout, CANARY, ok=20 - canary_failed, failed=canary_failed)
    step = rollout.evaluate(T0 + 1)
    assert (step is not None and step.action == "rollback") is rolls_back
    if rolls_back:
        assert step is not None and "error rate" in step.detail["reason"]


def test_error_rate_gate_at_the_allowed_rate_with_a_rounding_sum() -> None:
    rollout = make_rollout(dwell_seconds=NEVER)
    feed(rollout, STABLE, ok=13, failed=7)  # 35%
    feed(rollout, CANARY, ok=12, failed=8)  # 40%: exactly 35% + 5 points
    assert rollout.evaluate(T0 + 1) is None


def advance(rollout: Rollout, now: float) -> None:
    step = rollout.evaluate(now)
    assert step is not None and step.action == "advance", step
    rollout.apply(step, now)


def test_baseline_is_this_stages_stable_counts_when_it_has_enough() -> None:
    rollout = make_rollout(stages=[25, 50, 100], dwell_seconds=0)
    feed(rollout, STABLE, ok=10, failed=10)  # a bad first stage for the stable version: 50%
    feed(rollout, CANARY, ok=20)
    advance(rollout, T0)
    feed(rollout, STABLE, ok=20)
    feed(rollout, CANARY, ok=18, failed=2)  # 10%: under the whole rollout's 25%, 10 points over this stage's 0%
    step = rollout.evaluate(T0 + 1)
    assert step is not None and step.action == "rollback"


@pytest.mark.parametrize(("canary_failed", "rolls_back"), [(4, False), (6, True)])
def test_at_100_percent_the_baseline_is_the_whole_rollouts_stable(canary_failed: int, rolls_back: bool) -> None:
    rollout = make_rollout(dwell_seconds=0)
    feed(rollout, STABLE, ok=16, failed=4)  # 20% over the whole rollout
    feed(rollout, CANARY, ok=20)
    advance(rollout, T0)
    assert rollout.percent == 100 and rollout.in_stage["stable"].requests == 0
    feed(rollout, CANARY, ok=20 - canary_failed, failed=canary_failed)  # 20% passes (against 0% it would not)
    step = rollout.evaluate(T0 + 1)
    assert step is not None
    assert step.action == ("rollback" if rolls_back else "complete")


@pytest.mark.parametrize(("canary_failed", "rolls_back"), [(1, False), (2, True)])
def test_without_any_stable_figures_the_baseline_is_zero_errors(canary_failed: int, rolls_back: bool) -> None:
    rollout = make_rollout(stages=[100], dwell_seconds=NEVER)
    feed(rollout, CANARY, ok=20 - canary_failed, failed=canary_failed)
    step = rollout.evaluate(T0 + 1)
    assert (step is not None and step.action == "rollback") is rolls_back


@pytest.mark.parametrize(("stable_s", "canary_s", "slack_ms", "rolls_back"), [
    (0.2, 0.28, 50, False),  # within 1.5 x 0.2 s + 50 ms
    (0.2, 0.5, 50, True),
    (0.01, 0.05, 50, False),  # the slack absorbs a small absolute difference ...
    (0.01, 0.05, 0, True),  # ... that is five times the stable p99 without it
])
def test_p99_gate(stable_s: float, canary_s: float, slack_ms: float, rolls_back: bool) -> None:
    rollout = make_rollout(dwell_seconds=NEVER, max_p99_ratio=1.5, p99_slack_ms=slack_ms)
    feed(rollout, STABLE, ok=20, seconds=stable_s)
    feed(rollout, CANARY, ok=20, seconds=canary_s)
    step = rollout.evaluate(T0 + 1)
    assert (step is not None and step.action == "rollback") is rolls_back
    if rolls_back:
        assert step is not None and "p99 latency" in step.detail["reason"]


@pytest.mark.parametrize("short", ["canary", "stable", "no stable"])
def test_p99_gate_is_skipped_without_min_requests_successes_on_each_side(short: str) -> None:
    rollout = make_rollout(dwell_seconds=NEVER)
    # One failure of 20 is 5%: within the error gate, yet one success short of min_requests.
    if short != "no stable":
        feed(rollout, STABLE, ok=19 if short == "stable" else 20, failed=1 if short == "stable" else 0, seconds=0.01)
    feed(rollout, CANARY, ok=19 if short == "canary" else 20, failed=1 if short == "canary" else 0, seconds=5.0)
    assert rollout.evaluate(T0 + 1) is None
    if short == "canary":  # one more slow success and the gate applies
        feed(rollout, CANARY, ok=1, seconds=5.0)
        step = rollout.evaluate(T0 + 1)
        assert step is not None and step.action == "rollback"


# --- Rollout: stages ----------------------------------------------------------


def test_advancing_needs_both_the_dwell_and_min_requests_then_the_last_stage_completes() -> None:
    rollout = make_rollout(dwell_seconds=60, min_requests=20)
    feed(rollout, STABLE, ok=100)  # stable requests do not count towards min_requests
    feed(rollout, CANARY, ok=19)
    assert rollout.evaluate(T0 + 3600) is None  # dwelt long enough, one canary request short
    feed(rollout, CANARY, ok=1)
    assert rollout.evaluate(T0 + 59) is None  # enough requests, a second short
    step = rollout.evaluate(T0 + 60)
    assert step is not None
    assert (step.action, step.detail["from"], step.detail["to"], step.status) == ("advance", 50, 100, None)
    rollout.apply(step, T0 + 60)
    assert (rollout.stage, rollout.percent, rollout.stage_started, rollout.status) == (1, 100, T0 + 60, "running")
    assert rollout.in_stage["canary"].requests == 0 and rollout.in_stage["stable"].requests == 0
    assert (rollout.overall["canary"].requests, rollout.overall["stable"].requests) == (20, 100)

    assert rollout.evaluate(T0 + 600) is None  # the new stage needs its own canary requests
    feed(rollout, CANARY, ok=20)
    assert rollout.evaluate(T0 + 119) is None  # and its own dwell, from when it started
    step = rollout.evaluate(T0 + 120)
    assert step is not None
    assert (step.action, step.status, step.move_alias_to) == ("complete", "completed", CANARY)
    rollout.apply(step, T0 + 120)
    assert (rollout.status, rollout.ended, rollout.percent) == ("completed", T0 + 120, 0.0)
    assert rollout.evaluate(T0 + 9999) is None  # an ended rollout calls for nothing more


def test_a_paused_rollout_still_rolls_back_but_does_not_advance() -> None:
    rollout = make_rollout(dwell_seconds=60)
    rollout.apply(Step("pause", {"reason": "paused"}, "paused"), T0 + 10)
    assert (rollout.status, rollout.percent, rollout.ended) == ("paused", 50, None)  # holds its share
    feed(rollout, CANARY, ok=20)
    assert rollout.evaluate(T0 + 3600) is None
    feed(rollout, CANARY, failed=20)
    step = rollout.evaluate(T0 + 3600)
    assert step is not None and (step.action, step.status) == ("rollback", "rolled_back")


def test_a_paused_rollout_does_not_complete() -> None:
    rollout = make_rollout(stages=[100], dwell_seconds=0)
    rollout.apply(Step("pause", {}, "paused"), T0)
    feed(rollout, CANARY, ok=20)
    assert rollout.evaluate(T0 + 3600) is None


def test_resume_restarts_the_stages_dwell() -> None:
    rollout = make_rollout(dwell_seconds=60)
    feed(rollout, CANARY, ok=20)
    rollout.apply(Step("pause", {}, "paused"), T0 + 30)
    rollout.apply(Step("resume", {}, "running"), T0 + 1000)
    assert (rollout.status, rollout.stage_started) == ("running", T0 + 1000)
    assert rollout.evaluate(T0 + 1059) is None  # long past T0 + 60, but the dwell counts from the resume
    step = rollout.evaluate(T0 + 1060)
    assert step is not None and step.action == "advance"


def test_steer_sends_points_under_the_percentage_to_the_canary() -> None:
    rollout = make_rollout(stages=[5, 50, 100], dwell_seconds=0, min_requests=1)
    assert [rollout.steer(p) for p in (0.0, 0.0499, 0.05, 0.9999)] == [CANARY, CANARY, STABLE, STABLE]
    feed(rollout, CANARY, ok=1)
    advance(rollout, T0)
    assert [rollout.steer(p) for p in (0.4999, 0.5)] == [CANARY, STABLE]
    feed(rollout, CANARY, ok=1)
    advance(rollout, T0)
    assert rollout.steer(0.9999) == CANARY
    rollout.apply(Step("abort", {"reason": "aborted"}, "aborted"), T0 + 1)
    assert (rollout.percent, rollout.steer(0.0)) == (0.0, STABLE)


@pytest.mark.parametrize("stages", [[0, 100], [-5, 100], [50, 150], [50, 50, 100], [50, 25, 100], [25, 50], [],
                                    [math.nan, 100]])
def test_rollout_spec_refuses_stages_that_do_not_grow_to_100(stages: list[float]) -> None:
    with pytest.raises(ValidationError):
        RolloutSpec(name="chat", version=CANARY, stages=stages)


@pytest.mark.parametrize("stages", [[100], [0.5, 100], [5, 10, 25, 50, 100]])
def test_rollout_spec_accepts_growing_stages_ending_at_100(stages: list[float]) -> None:
    assert RolloutSpec(name="chat", version=CANARY, stages=stages).stages == stages


# --- AbTest -------------------------------------------------------------------


def test_ab_steer_follows_the_weights() -> None:
    test = make_ab(weights=(3, 1))
    assert [test.steer(p) for p in (0.0, 0.7499, 0.75, 0.9999)] == [STABLE, STABLE, CANARY, CANARY]
    assert sum(test.steer(i / 1000) == STABLE for i in range(1000)) == 750


def clear_success_rate_winner(test: AbTest) -> None:
    feed(test, STABLE, ok=50, failed=50)
    feed(test, CANARY, ok=100)


def test_ab_evaluate_decides_once_at_the_horizon_and_promotes_only_when_asked() -> None:
    manual = make_ab()
    clear_success_rate_winner(manual)
    assert manual.decision().winner == CANARY
    step = manual.evaluate(T0)  # auto_promote is off: the test ends with its decision, the alias stays
    assert step is not None and (step.action, step.status, step.move_alias_to) == ("decide", "concluded", None)
    manual.apply(step, T0)
    feed(manual, STABLE, ok=500)  # later outcomes change nothing: the decision was taken once
    assert manual.public()["decision"]["winner"] == CANARY and manual.evaluate(T0 + 1) is None

    collecting = make_ab(auto_promote=True)
    feed(collecting, STABLE, ok=50, failed=49)  # one observation short of min_samples
    feed(collecting, CANARY, ok=100)
    assert collecting.decision().status == "collecting"
    assert collecting.evaluate(T0) is None

    auto = make_ab(auto_promote=True)
    clear_success_rate_winner(auto)
    step = auto.evaluate(T0)
    assert step is not None
    assert (step.action, step.status, step.move_alias_to, step.detail["version"]) == (
        "promote", "concluded", CANARY, CANARY)
    auto.apply(step, T0)
    assert (auto.status, auto.ended, auto.evaluate(T0 + 1)) == ("concluded", T0, None)


def test_ab_public_is_json_even_when_a_welch_statistic_is_infinite() -> None:
    test = make_ab(metric="latency", min_samples=10)
    # Binary fractions: the sums are exact, so both variances are exactly 0 and the statistic is infinite.
    feed(test, STABLE, ok=10, seconds=0.5)
    feed(test, CANARY, ok=10, seconds=0.25)
    assert math.isinf(test.decision().comparisons[0].statistic)
    public = test.public()
    json.dumps(public, allow_nan=False)
    assert public["decision"]["winner"] == CANARY  # lower latency wins
    assert public["decision"]["comparisons"][0]["statistic"] is None


# --- the controller -------------------------------------------------------


def test_steer_through_the_alias_the_rollout_sits_on(experiments: Experiments, versions: VersionStore) -> None:
    rollout = start_rollout(experiments)
    assignment = experiments.steer("chat", "user-1")
    assert assignment is not None and assignment.experiment is rollout
    assert assignment.reference == f"chat:{assignment.version}"
    seen = set()
    for n in range(64):
        user = f"user-{n}"
        placed = {experiments.steer(reference, user).version  # type: ignore[union-attr]
                  for reference in ("chat", "chat@production") for _ in range(3)}
        assert len(placed) == 1, user  # sticky, whichever way the request names the alias
        seen |= placed
    assert seen == {STABLE, CANARY}  # at 50% both sides get users (all 64 on one side: 2**-63)

    versions.set_alias("chat", "staging", STABLE)
    for reference in ("chat:1.0.0", "chat:1.1.0", "chat@latest", "chat@staging", "chat@nowhere", "other"):
        assert experiments.steer(reference, "user-1") is None, reference


def test_finished_counts_2xx_and_5xx_but_not_4xx_or_499(experiments: Experiments) -> None:
    rollout = start_rollout(experiments)
    experiments.dirty.clear()
    for status in (200, 201, 500, 503, 400, 404, 429, 499):
        answer(experiments, rollout, CANARY, 1, status=status)
    for counts in (rollout.in_stage["canary"], rollout.overall["canary"]):
        assert (counts.successes, counts.failures) == (2, 2)
    assert rollout.in_stage["stable"].requests == 0
    assert experiments.dirty == {rollout.id}


def test_tick_walks_the_stages_and_completion_moves_the_alias(experiments: Experiments,
                                                              versions: VersionStore) -> None:
    rollout = start_rollout(experiments, dwell_seconds=60, min_requests=5)
    started = rollout.stage_started
    answer(experiments, rollout, STABLE, 5)
    answer(experiments, rollout, CANARY, 5)
    experiments.tick(started + 59)
    assert rollout.stage == 0
    experiments.tick(started + 60)
    assert (rollout.stage, rollout.percent) == (1, 100)
    answer(experiments, rollout, CANARY, 5)
    experiments.tick(started + 119)
    assert rollout.status == "running"
    experiments.tick(started + 120)

    assert rollout.status == "completed" and rollout.id not in experiments.running
    assert versions.aliases("chat")["production"] == CANARY
    moved = versions.history("chat", limit=1)[0]
    assert (moved["action"], moved["alias"], moved["version"], moved["previous"], moved["actor"]) == (
        "alias.set", "production", CANARY, STABLE, f"rollout {rollout.id}")
    assert [e["action"] for e in experiments.store.events(rollout.id)] == ["start", "advance", "complete"]
    assert experiments.store.get(rollout.id)["status"] == "completed"  # type: ignore[index]
    assert experiments.steer("chat", "user-1") is None  # production is plain 1.1.0 now


@pytest.mark.parametrize("status", ["running", "paused"])
def test_a_restart_resumes_the_rollout(tmp_path: Path, experiments: Experiments, versions: VersionStore,
                                       status: str) -> None:
    rollout = start_rollout(experiments, stages=[25, 50, 100], dwell_seconds=0, min_requests=5)
    answer(experiments, rollout, CANARY, 5)
    answer(experiments, rollout, STABLE, 7)
    experiments.tick(rollout.stage_started + 1)  # stage 1; the stage's counts start over
    if status == "paused":
        experiments.control(rollout.id, "rollout", "pause", "alice")
    answer(experiments, rollout, CANARY, 3, seconds=0.2)  # too few for a verdict: only a flush keeps these
    answer(experiments, rollout, STABLE, 1, status=502)
    before = (rollout.status, rollout.stage, rollout.stable, rollout.stage_started, rollout.stats())
    experiments.flush()
    experiments.close()
    versions.close()

    reopened_versions = VersionStore(tmp_path / "registry.db")
    again = open_experiments(tmp_path, reopened_versions)
    try:
        back = again.running[rollout.id]
        assert isinstance(back, Rollout) and back is not rollout
        assert (back.status, back.stage, back.stable, back.stage_started, back.stats()) == before
        assert back.status == status
        assert back.in_stage["canary"].requests == 3 and back.overall["canary"].requests == 8
        raises_service_error(lambda: again.guard_alias("chat", "production"), 409, "experiment_running")
        assert again.steer("chat", "user-1") is not None
    finally:
        again.close()
        reopened_versions.close()


def test_guard_alias_holds_while_an_experiment_runs(experiments: Experiments) -> None:
    experiments.guard_alias("chat", "production")  # nothing runs yet
    rollout = start_rollout(experiments)
    raises_service_error(lambda: experiments.guard_alias("chat", "production"), 409, "experiment_running")
    raises_service_error(lambda: start_rollout(experiments), 409, "experiment_running")
    experiments.guard_alias("chat", "staging")  # only the alias it sits on
    experiments.control(rollout.id, "rollout", "pause", "alice")
    raises_service_error(lambda: experiments.guard_alias("chat", "production"), 409, "experiment_running")
    experiments.control(rollout.id, "rollout", "abort", "alice")
    experiments.guard_alias("chat", "production")


def test_a_failed_alias_move_leaves_the_rollout_to_try_again(experiments: Experiments, versions: VersionStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rollout = start_rollout(experiments, stages=[100], dwell_seconds=0, min_requests=5)
    answer(experiments, rollout, CANARY, 5)

    def locked(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(VersionStore, "set_alias", locked)
    now = rollout.stage_started + 1
    experiments.tick(now)  # logs, does not raise
    assert (rollout.status, rollout.stage, rollout.ended) == ("running", 0, None)
    assert experiments.running[rollout.id] is rollout
    assert experiments.store.get(rollout.id)["status"] == "running"  # type: ignore[index]
    assert [e["action"] for e in experiments.store.events(rollout.id)] == ["start"]

    monkeypatch.undo()
    experiments.tick(now + 1)
    assert rollout.status == "completed"
    assert versions.aliases("chat")["production"] == CANARY


def test_feedback_rules(experiments: Experiments) -> None:
    rollout = start_rollout(experiments)
    experiments.finished(Assignment(rollout, CANARY), "req-mine", "key-a", "chat", 200, 0.1, 5)
    experiments.finished(None, "req-plain", "key-a", "other-model", 200, 0.1, 5)
    experiments.finished(Assignment(rollout, CANARY), "req-left", "key-a", "chat", 499, 0.1, None)

    raises_service_error(lambda: experiments.feedback("req-unknown", 1.0, None, "key-a", False), 404,
                         "request_not_found")
    raises_service_error(lambda: experiments.feedback("req-left", 1.0, None, "key-a", False), 404,
                         "request_not_found")  # the client left: there was no answer to rate
    raises_service_error(lambda: experiments.feedback("req-mine", 1.0, None, "key-b", False), 404,
                         "request_not_found")  # another key's request looks like none at all

    given = experiments.feedback("req-mine", 0.75, "good", "key-a", False)
    assert (given["experiment"], given["version"], given["score"]) == (rollout.id, CANARY, 0.75)
    for counts in (rollout.in_stage["canary"].feedback, rollout.overall["canary"].feedback):
        assert (counts.n, counts.mean()) == (1, 0.75)
    assert rollout.in_stage["stable"].feedback.n == 0
    raises_service_error(lambda: experiments.feedback("req-mine", 0.0, None, "key-a", False), 409,
                         "feedback_exists")
    assert rollout.in_stage["canary"].feedback.n == 1  # the refused second vote counted for nothing

    plain = experiments.feedback("req-plain", 1.0, None, "admin", True)  # an admin rates any key's answer
    assert (plain["experiment"], plain["version"]) == (None, None)


def test_feedback_counts_for_the_ab_variant(experiments: Experiments) -> None:
    public = experiments.create_ab_test(AbTestSpec(name="chat", variants=[{"version": STABLE},
                                                                          {"version": CANARY}]), "alice")
    test = experiments.running[public["id"]]
    assert isinstance(test, AbTest)
    experiments.finished(Assignment(test, STABLE), "req-ab", None, "chat", 200, 0.1, 5)
    experiments.feedback("req-ab", 1.0, None, None, True)
    assert (test.variant_stats[STABLE].feedback.n, test.variant_stats[CANARY].feedback.n) == (1, 0)


def test_control_pause_resume_abort_a_rollout(experiments: Experiments) -> None:
    rollout = start_rollout(experiments)
    started = rollout.stage_started
    assert experiments.control(rollout.id, "rollout", "pause", "alice")["status"] == "paused"
    assert experiments.control(rollout.id, "rollout", "pause", "alice")["status"] == "paused"  # no-op
    resumed = experiments.control(rollout.id, "rollout", "resume", "alice")
    assert resumed["status"] == "running" and resumed["stage_started"] >= started
    aborted = experiments.control(rollout.id, "rollout", "abort", "alice")
    assert (aborted["status"], aborted["percent"]) == ("aborted", 0.0)
    assert rollout.id not in experiments.running
    events = experiments.store.events(rollout.id)
    assert [(e["action"], e["actor"]) for e in events] == [
        ("start", "alice"), ("pause", "alice"), ("resume", "alice"), ("abort", "alice")]

    for action in ("pause", "resume", "abort"):
        raises_service_error(lambda a=action: experiments.control(rollout.id, "rollout", a, "alice"), 409,
                             "experiment_ended")
    raises_service_error(lambda: experiments.control("rollout_nope", "rollout", "pause", "alice"), 404,
                         "rollout_not_found")
    raises_service_error(lambda: experiments.control(rollout.id, "ab", "stop", "alice"), 404,
                         "experiment_not_found")


def test_control_stops_an_ab_test_promoting_a_variant_only(experiments: Experiments,
                                                          versions: VersionStore) -> None:
    versions.create_version("chat", OTHER, "chat-v3")
    public = experiments.create_ab_test(AbTestSpec(name="chat", variants=[{"version": STABLE},
                                                                          {"version": CANARY}]), "alice")
    test_id = public["id"]
    raises_service_error(lambda: experiments.control(test_id, "ab", "stop", "bob", promote=OTHER), 400,
                         "not_a_variant")
    raises_service_error(lambda: experiments.control(test_id, "ab", "stop", "bob", promote="9.9.9"), 404,
                         "version_not_found")
    assert experiments.running[test_id].status == "running"  # refusals change nothing

    stopped = experiments.control(test_id, "ab", "stop", "bob", promote=CANARY)
    assert stopped["status"] == "concluded"
    assert versions.aliases("chat")["production"] == CANARY
    assert versions.history("chat", limit=1)[0]["actor"] == "bob"
    raises_service_error(lambda: experiments.control(test_id, "ab", "stop", "bob"), 409, "experiment_ended")
    raises_service_error(lambda: experiments.control("ab_nope", "ab", "stop", "bob"), 404,
                         "experiment_not_found")


def test_tick_promotes_an_auto_promote_ab_winner(experiments: Experiments, versions: VersionStore) -> None:
    spec = AbTestSpec(name="chat", variants=[{"version": STABLE}, {"version": CANARY}], auto_promote=True,
                      min_samples=100)
    test = experiments.running[experiments.create_ab_test(spec, "alice")["id"]]
    answer(experiments, test, STABLE, 50)
    answer(experiments, test, STABLE, 50, status=500)
    answer(experiments, test, CANARY, 99)
    experiments.tick(T0)
    assert test.status == "running"  # 99 of 100 samples: still collecting
    answer(experiments, test, CANARY, 1)
    experiments.tick(T0)
    assert test.status == "concluded"
    assert versions.aliases("chat")["production"] == CANARY
    assert versions.history("chat", limit=1)[0]["actor"] == f"ab {test.id}"


def test_feedback_memory_is_bounded_and_keys_may_reuse_request_ids(experiments: Experiments,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The memory behind feedback holds the newest answers only (it is kept for every request).
    monkeypatch.setattr("orchestrator.experiments.controller.REMEMBERED_REQUESTS", 3)
    for number in range(4):
        experiments.finished(None, f"req-{number}", "key-a", "chat-v1", 200, 0.1, 1)
    assert len(experiments.answered) == 3 and "req-0" not in experiments.last_owner
    raises_service_error(lambda: experiments.feedback("req-0", 1.0, None, "key-a", False), 404, "request_not_found")
    # Two keys choosing the same X-Request-ID are two answers: each rates its own.
    experiments.finished(None, "shared", "key-a", "chat-v1", 200, 0.1, 1)
    experiments.finished(None, "shared", "key-b", "chat-v2", 200, 0.1, 1)
    assert experiments.feedback("shared", 1.0, None, "key-a", False)["model"] == "chat-v1"
    assert experiments.feedback("shared", 0.0, None, "key-b", False)["model"] == "chat-v2"
