"""A canary rollout: a new version takes a growing share of the requests
through name@alias (5, 10, 25, 50, 100% by default), a stage at a time. A
stage ends after its dwell time once the canary has answered min_requests in
it; the last one ends by moving the alias to the new version.

Gates, checked every second from min_requests on: the canary's error rate
may exceed the stable version's by at most max_error_rate_increase, and its
p99 latency may be at most max_p99_ratio times the stable's (plus a slack, so
that millisecond noise does not count). The stable version's figures are this
stage's, or the whole rollout's while this stage has too few (at 100% it has
none). A failed gate rolls back at once: every request goes to the stable
version again and the alias never moved. Gates run while paused too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.experiments.base import Experiment, Step
from orchestrator.experiments.outcomes import VariantStats

SIDES = ("stable", "canary")


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="The registered model.")
    version: str = Field(min_length=1, max_length=128, description="The version rolled out.")
    alias: str = Field("production", min_length=1, max_length=63,
                       description="The alias moved at the end; the version it points at now is the stable one.")
    stages: list[float] = Field([5, 10, 25, 50, 100], min_length=1, max_length=20,
                                description="The canary's share of the traffic, in percent, stage by stage.")
    dwell_seconds: float = Field(300, ge=0, le=7 * 86400, description="The shortest time a stage lasts.")
    min_requests: int = Field(20, ge=1, le=10_000_000,
                              description="Canary requests a stage needs before a gate or the next stage.")
    max_error_rate_increase: float = Field(0.05, ge=0, le=1,
                                           description="Allowed canary error rate above the stable's (0.05: 5 points).")
    max_p99_ratio: float = Field(1.5, ge=1, le=1000, description="Allowed canary p99 latency over the stable's.")
    p99_slack_ms: float = Field(50, ge=0, le=3_600_000, description="Added to the allowed p99.")

    @field_validator("stages")
    @classmethod
    def _growing_to_100(cls, stages: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in stages):
            raise ValueError("each stage is a percentage above 0 and at most 100")
        if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
            raise ValueError("stages must grow from one to the next")
        if stages[-1] != 100:
            raise ValueError("the last stage must be 100 (the alias moves after it)")
        return stages


def _fresh() -> dict[str, VariantStats]:
    return {side: VariantStats() for side in SIDES}


class Rollout(Experiment):
    kind = "rollout"

    def __init__(self, spec: RolloutSpec, stable: str, stage: int = 0, stage_started: float = 0.0,
                 counts: dict[str, dict[str, VariantStats]] | None = None, **fields: Any) -> None:
        super().__init__(name=spec.name, alias=spec.alias, **fields)
        self.definition = spec
        self.stable = stable
        self.stage = stage
        self.stage_started = stage_started
        counts = counts or {}
        self.in_stage = counts.get("stage") or _fresh()  # this stage's counts
        self.overall = counts.get("total") or _fresh()  # the whole rollout's

    @property
    def percent(self) -> float:
        """The canary's share of the traffic now (0 once it ended)."""
        return self.definition.stages[self.stage] if self.active else 0.0

    def versions(self) -> tuple[str, ...]:
        return (self.stable, self.definition.version)

    def steer(self, point: float) -> str:
        return self.definition.version if point * 100 < self.percent else self.stable

    def _side(self, version: str) -> str | None:
        if version == self.definition.version:
            return "canary"
        return "stable" if version == self.stable else None

    def record(self, version: str, success: bool, seconds: float, completion_tokens: int | None) -> None:
        side = self._side(version)
        if side is not None:
            self.in_stage[side].record(success, seconds, completion_tokens)
            self.overall[side].record(success, seconds, completion_tokens)

    def add_feedback(self, version: str, score: float) -> None:
        side = self._side(version)
        if side is not None:
            self.in_stage[side].feedback.add(score)
            self.overall[side].feedback.add(score)

    def _baseline(self) -> VariantStats | None:
        """The stable version's figures to compare with: this stage's, else the whole rollout's, else none."""
        enough = self.definition.min_requests
        for counts in (self.in_stage["stable"], self.overall["stable"]):
            if counts.requests >= enough:
                return counts
        return None

    def failed_gate(self) -> str | None:
        """Why the canary fails a gate now, if it does."""
        spec = self.definition
        canary = self.in_stage["canary"]
        if canary.requests < spec.min_requests:
            return None
        baseline = self._baseline()
        stable_rate = baseline.error_rate() if baseline is not None else 0.0
        if canary.error_rate() > stable_rate + spec.max_error_rate_increase + 1e-9:  # at the limit is allowed
            return (f"error rate {canary.error_rate():.1%} over {canary.requests} canary requests, stable "
                    f"{stable_rate:.1%}: more than {spec.max_error_rate_increase:.1%} above it")
        if baseline is None or canary.successes < spec.min_requests or baseline.successes < spec.min_requests:
            return None
        canary_p99, stable_p99 = canary.percentile(0.99), baseline.percentile(0.99)
        assert canary_p99 is not None and stable_p99 is not None
        allowed = stable_p99 * spec.max_p99_ratio + spec.p99_slack_ms / 1000
        if canary_p99 > allowed * (1 + 1e-9):
            return (f"p99 latency {canary_p99 * 1000:.0f} ms, stable {stable_p99 * 1000:.0f} ms: above the "
                    f"{allowed * 1000:.0f} ms allowed")
        return None

    def evaluate(self, now: float) -> Step | None:
        if not self.active:
            return None
        failed = self.failed_gate()
        if failed is not None:
            return Step("rollback", {"reason": f"rolled back at {self.percent:g}%: {failed}",
                                     **self._figures()}, "rolled_back")
        if self.status == "paused":
            return None
        spec = self.definition
        if now - self.stage_started < spec.dwell_seconds or self.in_stage["canary"].requests < spec.min_requests:
            return None
        if self.stage == len(spec.stages) - 1:
            return Step("complete", {"reason": f"{spec.version} took 100% and passed its gates", **self._figures()},
                        "completed", spec.version)
        return Step("advance", {"from": self.percent, "to": spec.stages[self.stage + 1], **self._figures()})

    def _figures(self) -> dict[str, Any]:
        return {side: self.in_stage[side].public() for side in SIDES}

    def apply(self, step: Step, now: float) -> None:
        if step.action == "advance":
            self.stage += 1
            self.stage_started = now
            self.in_stage = _fresh()
        elif step.action == "resume":
            self.stage_started = now  # a paused stage dwells again in full
        super().apply(step, now)

    def spec(self) -> dict[str, Any]:
        return self.definition.model_dump()

    def state(self) -> dict[str, Any]:
        return {"stable": self.stable, "stage": self.stage, "stage_started": self.stage_started}

    def stats(self) -> dict[str, Any]:
        return {"stage": {side: s.to_dict() for side, s in self.in_stage.items()},
                "total": {side: s.to_dict() for side, s in self.overall.items()}}

    @classmethod
    def counts_from(cls, stats: dict[str, Any]) -> dict[str, dict[str, VariantStats]]:
        return {part: {side: VariantStats.from_dict(s) for side, s in sides.items()} for part, sides in stats.items()}

    def public(self) -> dict[str, Any]:
        spec = self.definition
        return {
            **super().public(), "version": spec.version, "stable": self.stable, "stages": spec.stages,
            "stage": self.stage, "percent": self.percent, "stage_started": self.stage_started,
            "dwell_seconds": spec.dwell_seconds, "min_requests": spec.min_requests,
            "gates": {"max_error_rate_increase": spec.max_error_rate_increase, "max_p99_ratio": spec.max_p99_ratio,
                      "p99_slack_ms": spec.p99_slack_ms},
            "current_stage": self._figures(),
            "total": {side: s.public() for side, s in self.overall.items()},
        }
