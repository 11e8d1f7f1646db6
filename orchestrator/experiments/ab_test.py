"""An A/B test: requests through name@alias split between versions by weight
(sticky per user), one metric compared with stats.decide.

It is fixed-horizon: once every variant has min_samples observations the
test decides, once, and ends ("concluded"): with auto_promote the alias moves
to the winner, if there is one; else it stays. The decision is kept. (Testing
again as samples keep coming would, sooner or later, find a difference that
is not there.) Until then GET shows the interim figures, and a person may
stop it early, promoting a version or not."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.experiments.assignment import pick
from orchestrator.experiments.base import Experiment, Step
from orchestrator.experiments.outcomes import DEFAULT_GOAL, Metric, VariantStats
from orchestrator.experiments.stats import Decision, Goal, decide


class VariantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128, description="A version of the registered model.")
    weight: float = Field(1.0, gt=0, le=1_000_000, description="Its share of the traffic, relative to the others.")


class AbTestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="The registered model.")
    alias: str = Field("production", min_length=1, max_length=63,
                       description="The alias whose requests are split (plain `name` counts as @production).")
    variants: list[VariantSpec] = Field(min_length=2, max_length=10,
                                        description="The first is the control; each a different version.")
    metric: Metric = Field("success_rate", description="What decides: success_rate, latency, tokens or feedback.")
    goal: Goal | None = Field(None, description="max or min; by default max for success_rate and feedback, "
                                                "min for latency and tokens.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="The significance level.")
    min_samples: int = Field(100, ge=2, le=100_000_000,
                             description="Observations of the metric every variant needs before a decision.")
    auto_promote: bool = Field(False, description="Move the alias to the winner once there is one.")


class AbTest(Experiment):
    kind = "ab"

    def __init__(self, spec: AbTestSpec, stats: dict[str, VariantStats] | None = None,
                 decided: dict[str, Any] | None = None, **fields: Any) -> None:
        super().__init__(name=spec.name, alias=spec.alias, **fields)
        self.definition = spec
        self.decided = decided  # the decision taken at the horizon (public form), once taken
        self.variant_stats = stats or {v.version: VariantStats() for v in spec.variants}
        self._weights = [v.weight for v in spec.variants]

    @property
    def goal(self) -> Goal:
        return self.definition.goal or DEFAULT_GOAL[self.definition.metric]

    def versions(self) -> tuple[str, ...]:
        return tuple(v.version for v in self.definition.variants)

    def steer(self, point: float) -> str:
        return self.definition.variants[pick(self._weights, point)].version

    def record(self, version: str, success: bool, seconds: float, completion_tokens: int | None) -> None:
        if version in self.variant_stats:
            self.variant_stats[version].record(success, seconds, completion_tokens)

    def add_feedback(self, version: str, score: float) -> None:
        if version in self.variant_stats:
            self.variant_stats[version].feedback.add(score)

    def decision(self) -> Decision:
        spec = self.definition
        summaries = {v.version: self.variant_stats[v.version].summary(spec.metric) for v in spec.variants}
        return decide(summaries, spec.variants[0].version, self.goal, spec.alpha, spec.min_samples)

    def evaluate(self, now: float) -> Step | None:
        """At the horizon: the one decision, and the end of the test."""
        if self.status != "running":
            return None
        decision = self.decision()
        if decision.status == "collecting":
            return None
        detail = {"reason": decision.reason, "decision": _public_decision(decision)}
        if decision.winner is not None and self.definition.auto_promote:
            return Step("promote", {**detail, "version": decision.winner}, "concluded", decision.winner)
        if decision.winner is not None:
            detail["reason"] += "; not promoted (auto_promote is off): move the alias to promote it"
        return Step("decide", detail, "concluded")

    def apply(self, step: Step, now: float) -> None:
        if "decision" in step.detail:
            self.decided = step.detail["decision"]
        super().apply(step, now)

    def state(self) -> dict[str, Any]:
        return {"decided": self.decided}

    def spec(self) -> dict[str, Any]:
        return self.definition.model_dump()

    def stats(self) -> dict[str, Any]:
        return {version: s.to_dict() for version, s in self.variant_stats.items()}

    def public(self) -> dict[str, Any]:
        spec = self.definition
        if self.decided is not None:
            decision = self.decided
        elif self.active:
            decision = _public_decision(self.decision())  # interim: status "collecting" until the horizon
        else:
            decision = {"status": "stopped", "winner": None, "reason": "ended before its horizon",
                        "comparisons": []}
        return {
            **super().public(), "metric": spec.metric, "goal": self.goal, "alpha": spec.alpha,
            "min_samples": spec.min_samples, "auto_promote": spec.auto_promote,
            "variants": [{"version": v.version, "weight": v.weight, "control": i == 0,
                          **self.variant_stats[v.version].public()} for i, v in enumerate(spec.variants)],
            "decision": decision,
        }


def _public_decision(decision: Decision) -> dict[str, Any]:
    return {
        "status": decision.status, "winner": decision.winner, "reason": decision.reason,
        "alpha": decision.alpha, "corrected_alpha": decision.corrected_alpha,
        "comparisons": [{"version": c.variant, "test": c.test, "statistic": _finite(c.statistic),
                         "p_value": c.p_value, "effect": c.effect, "significant": c.significant,
                         "better": c.better} for c in decision.comparisons],
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: a statistic that is infinite (constant samples that differ) shows as null."""
    return value if abs(value) != float("inf") else None
