"""What A/B tests and rollouts have in common: an id, the alias they sit on,
a status, and the step the controller carries out next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.experiments.store import ACTIVE


@dataclass(frozen=True)
class Step:
    """A change the controller makes to an experiment: its event's action and
    detail, the status it leaves it in, and the version its alias moves to
    (first: if moving the alias fails, nothing else changes)."""

    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # None: unchanged
    move_alias_to: str | None = None


@dataclass
class Experiment:
    id: str
    name: str
    alias: str
    status: str
    created: float
    created_by: str | None
    reason: str | None = None
    ended: float | None = None

    kind = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def steer(self, point: float) -> str:
        """The version a request at point (0 <= point < 1) goes to."""
        raise NotImplementedError

    def versions(self) -> tuple[str, ...]:
        """The versions this experiment sends requests to."""
        raise NotImplementedError

    def record(self, version: str, success: bool, seconds: float, completion_tokens: int | None) -> None:
        raise NotImplementedError

    def add_feedback(self, version: str, score: float) -> None:
        raise NotImplementedError

    def evaluate(self, now: float) -> Step | None:
        """The step the rules call for now, if any (not yet taken)."""
        return None

    def apply(self, step: Step, now: float) -> None:
        """Take a step: what changes in memory (the controller stores it)."""
        if step.status is not None:
            self.status = step.status
            if not self.active:
                self.ended = now
                self.reason = step.detail.get("reason", self.reason)

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "alias": self.alias, "status": self.status,
                "reason": self.reason, "created": self.created, "created_by": self.created_by, "ended": self.ended}
