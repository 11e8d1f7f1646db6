"""The running experiments: which version a request goes to, what its answer
counts for, and the rules applied every second (a rollout's next stage or
rollback, an A/B test's promotion).

On the request path (steer, finished) everything is in memory and on the
event loop; experiments.db is written when an experiment changes state (at
once, with its event) and with the counts every few seconds. One experiment
at a time may sit on an alias, and while it does the alias moves only through
it (versions_api refuses a manual move).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.errors import ServiceError
from core.logs import log_event
from orchestrator.audit import AuditLog
from orchestrator.experiments.ab_test import AbTest, AbTestSpec
from orchestrator.experiments.assignment import point_of
from orchestrator.experiments.base import Experiment, Step
from orchestrator.experiments.canary import Rollout, RolloutSpec
from orchestrator.experiments.outcomes import VariantStats, classify
from orchestrator.experiments.store import ExperimentStore, FeedbackExists
from orchestrator.versions import ALIAS, RegistryError, VersionStore

log = logging.getLogger("modelyard.experiments")

TICK_SECONDS = 1.0
FLUSH_SECONDS = 5.0
REMEMBERED_REQUESTS = 50_000  # answers feedback can still be given for (about 17 MB of memory)
CLIENT_GONE = 499
WHAT = {"ab": ("A/B test", "experiment_not_found"), "rollout": ("rollout", "rollout_not_found")}  # kind -> words


@dataclass(frozen=True)
class Assignment:
    """Where an experiment sent one request."""

    experiment: Experiment
    version: str

    @property
    def reference(self) -> str:
        return f"{self.experiment.name}:{self.version}"


@dataclass(frozen=True, slots=True)  # slots: 50,000 of them are kept
class Answered:
    """What feedback on a request needs to know about it."""

    key_id: str | None
    model: str
    experiment: str | None
    version: str | None


def _build(row: dict[str, Any]) -> Experiment:
    fields = {"id": row["id"], "status": row["status"], "created": row["created"],
              "created_by": row["created_by"], "reason": row["reason"], "ended": row["ended"]}
    if row["kind"] == AbTest.kind:
        stats = {version: VariantStats.from_dict(s) for version, s in row["stats"].items()}
        return AbTest(AbTestSpec.model_validate(row["spec"]), stats or None, row["state"].get("decided"), **fields)
    state = row["state"]
    counts = Rollout.counts_from(row["stats"]) if row["stats"] else None
    return Rollout(RolloutSpec.model_validate(row["spec"]), state["stable"], state["stage"], state["stage_started"],
                   counts, **fields)


class Experiments:
    def __init__(self, store: ExperimentStore, versions: VersionStore, audit: AuditLog | None = None) -> None:
        self.store = store
        self.versions = versions
        self.audit = audit
        self.running: dict[str, Experiment] = {}  # id -> an active experiment
        self.on_alias: dict[tuple[str, str], Experiment] = {}  # (name, alias) -> the one sitting on it
        # (key id or "", request id) -> the answer: clients may choose their request ids, so only the pair
        # is one request. last_owner: whose request an id was last, for admins rating any request.
        self.answered: OrderedDict[tuple[str, str], Answered] = OrderedDict()
        self.last_owner: dict[str, str] = {}
        self.dirty: set[str] = set()  # ids whose counts changed since the last flush
        self.steps: Counter[tuple[str, str]] = Counter()  # (kind, action) -> times taken
        for row in store.active():
            try:
                self._register(_build(row))
            except Exception:  # noqa: BLE001 - one unreadable row must not stop the orchestrator
                log.exception("experiment %s could not be resumed", row["id"])

    def _register(self, experiment: Experiment) -> None:
        self.running[experiment.id] = experiment
        self.on_alias[(experiment.name, experiment.alias)] = experiment

    def _unregister(self, experiment: Experiment) -> None:
        self.running.pop(experiment.id, None)
        if self.on_alias.get((experiment.name, experiment.alias)) is experiment:
            del self.on_alias[(experiment.name, experiment.alias)]

    # --- the request path -------------------------------------------------

    def steer(self, reference: str, user: str | None) -> Assignment | None:
        """The version an experiment sends a request for reference to, if one sits on the alias it goes through."""
        if not self.on_alias:
            return None
        found = self.versions.alias_used(reference)
        experiment = self.on_alias.get(found) if found is not None else None
        if experiment is None:
            return None
        return Assignment(experiment, experiment.steer(point_of(experiment.id, user)))

    def finished(self, assignment: Assignment | None, request_id: str, key_id: str | None, model: str,
                 status: int, seconds: float, completion_tokens: int | None) -> None:
        """A request is over: count it for its experiment, and remember it for feedback."""
        if status and status != CLIENT_GONE:
            slot = (key_id or "", request_id)
            self.answered[slot] = Answered(key_id, model, assignment.experiment.id if assignment else None,
                                           assignment.version if assignment else None)
            self.answered.move_to_end(slot)
            self.last_owner[request_id] = slot[0]
            while len(self.answered) > REMEMBERED_REQUESTS:
                (owner, old_id), _ = self.answered.popitem(last=False)
                if self.last_owner.get(old_id) == owner:
                    del self.last_owner[old_id]
        if assignment is None or not assignment.experiment.active:
            return
        success = classify(status)
        if success is not None:
            assignment.experiment.record(assignment.version, success, seconds, completion_tokens)
            self.dirty.add(assignment.experiment.id)

    def feedback(self, request_id: str, score: float, comment: str | None, key_id: str | None,
                 any_request: bool) -> dict[str, Any]:
        """Keep a user's score (0 bad to 1 good) of an answer; counted for its experiment's version.
        any_request: the caller may rate answers other keys got (an admin, or auth off)."""
        owner = key_id or ""
        answered = self.answered.get((owner, request_id))
        if answered is None and any_request and request_id in self.last_owner:
            owner = self.last_owner[request_id]
            answered = self.answered.get((owner, request_id))
        if answered is None:
            # Another key's request is "not found" too: its existence is not this caller's to learn.
            raise ServiceError(404, f"no answer with request id '{request_id}' among the last "
                               f"{REMEMBERED_REQUESTS} this key got", code="request_not_found", param="request_id")
        try:
            self.store.add_feedback(owner, request_id, ts=time.time(), rated_by=key_id, model=answered.model,
                                    experiment=answered.experiment, variant=answered.version, score=score,
                                    comment=comment)
        except FeedbackExists:
            raise ServiceError(409, f"request '{request_id}' has feedback already", code="feedback_exists",
                               param="request_id") from None
        experiment = self.running.get(answered.experiment) if answered.experiment else None
        if experiment is not None and answered.version is not None:
            experiment.add_feedback(answered.version, score)
            self.dirty.add(experiment.id)
        return {"object": "feedback", "request_id": request_id, "model": answered.model, "score": score,
                "experiment": answered.experiment, "version": answered.version}

    # --- the rules, every second -----------------------------------------

    async def run_forever(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick(time.time())
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - the next round tries again; the counts stay in memory
                    log.exception("writing experiment counts failed")

    def tick(self, now: float) -> None:
        for experiment in list(self.running.values()):
            try:
                step = experiment.evaluate(now)
                if step is not None:
                    self._take(experiment, step, f"{experiment.kind} {experiment.id}", now)
            except Exception:  # noqa: BLE001 - one experiment's trouble must not stop the others
                log.exception("experiment %s: applying its rules failed; trying again in %g s", experiment.id,
                              TICK_SECONDS)

    def _take(self, experiment: Experiment, step: Step, who: str, now: float) -> None:
        """Carry out a step: the alias first, then the new state, stored with its event, and only then
        in memory (if a write fails, memory still says what the table says, and the next tick, or the
        person, tries again; moving the alias again where it points changes nothing). Then the audit
        log and the metrics. who: the person's key name, or "<kind> <id>" for the automatic steps."""
        if step.move_alias_to is not None:
            self.versions.set_alias(experiment.name, experiment.alias, step.move_alias_to, actor=who)
        after = copy.deepcopy(experiment)  # the state to store, before memory changes
        after.apply(step, now)
        self.store.save(experiment.id, status=after.status, state=after.state(), stats=after.stats(),
                        reason=after.reason, ended=after.ended, now=now, event=(step.action, step.detail, who))
        experiment.apply(step, now)  # the same change: nothing ran in between (one event loop)
        if not experiment.active:
            self._unregister(experiment)
        self.dirty.discard(experiment.id)
        self.steps[(experiment.kind, step.action)] += 1
        self._record(experiment, step.action, step.detail, who)

    def _record(self, experiment: Experiment, action: str, detail: dict[str, Any], who: str) -> None:
        """A step to the audit log and the service log."""
        action = f"{experiment.kind}.{action}"
        kept = {"experiment": experiment.id, "alias": experiment.alias, "status": experiment.status,
                **{k: v for k, v in detail.items() if k in ("reason", "version", "from", "to")}}
        if self.audit is not None:
            self.audit.record("admin", action, actor=who, model=experiment.name, detail=kept)
        log_event(log, f"{action} {experiment.name}@{experiment.alias}", logging.INFO, **kept)

    def flush(self) -> None:
        """Store the counts that changed since the last flush."""
        dirty, self.dirty = self.dirty, set()
        stats = {i: self.running[i].stats() for i in dirty if i in self.running}
        try:
            self.store.save_stats(stats, time.time())
        except BaseException:
            self.dirty |= dirty
            raise

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.store.close()

    # --- the API ------------------------------------------------------------

    def _stored_version(self, name: str, version: str, param: str) -> str:
        record = self.versions.version(name, version)
        if record is None:
            raise ServiceError(404, f"'{name}' has no version {version}", code="version_not_found", param=param)
        return str(record["version"])

    def _check_alias(self, name: str, alias: str) -> str:
        """The version alias of name points at now; refusals for what an experiment cannot sit on."""
        if name not in self.versions.names():
            raise ServiceError(404, f"no registered model '{name}'", code="registered_model_not_found", param="name")
        aliases = self.versions.aliases(name)
        if not ALIAS.match(alias):
            raise ServiceError(400, f"alias {alias!r} must match {ALIAS.pattern}", code="invalid_alias", param="alias")
        if alias == "latest":
            raise ServiceError(400, "'latest' is computed and cannot be moved; use a set alias such as production",
                               code="reserved_alias", param="alias")
        if alias not in aliases:
            raise ServiceError(409, f"'{name}@{alias}' points at no version; point it at the version serving today "
                               f"first (PUT /admin/registry/models/{name}/aliases/{alias})", code="alias_not_set",
                               param="alias")
        self.guard_alias(name, alias)
        return aliases[alias]

    def guard_alias(self, name: str, alias: str) -> None:
        """409 while an experiment sits on name@alias (it is the one to move it)."""
        experiment = self.on_alias.get((name, alias))
        if experiment is not None:
            raise ServiceError(409, f"{experiment.kind} {experiment.id} is running on '{name}@{alias}'; end it first",
                               code="experiment_running", param="alias")

    def create_ab_test(self, spec: AbTestSpec, actor: str | None) -> dict[str, Any]:
        self._check_alias(spec.name, spec.alias)
        variants = [v.model_copy(update={"version": self._stored_version(spec.name, v.version, "variants")})
                    for v in spec.variants]
        if len({v.version for v in variants}) != len(variants):
            raise ServiceError(400, "each variant must be a different version", code="duplicate_variant",
                               param="variants")
        spec = spec.model_copy(update={"variants": variants})
        test = AbTest(spec, id="ab_" + secrets.token_hex(6), status="running", created=time.time(),
                      created_by=actor)
        return self._start(test, {"variants": [v.version for v in variants], "metric": spec.metric}, actor)

    def create_rollout(self, spec: RolloutSpec, actor: str | None) -> dict[str, Any]:
        stable = self._check_alias(spec.name, spec.alias)
        version = self._stored_version(spec.name, spec.version, "version")
        if version == stable:
            raise ServiceError(409, f"'{spec.name}@{spec.alias}' points at {version} already", code="already_serving",
                               param="version")
        spec = spec.model_copy(update={"version": version})
        now = time.time()
        rollout = Rollout(spec, stable, 0, now, id="rollout_" + secrets.token_hex(6), status="running", created=now,
                          created_by=actor)
        return self._start(rollout, {"version": version, "from": stable, "to": spec.stages[0]}, actor)

    def _start(self, experiment: Experiment, detail: dict[str, Any], actor: str | None) -> dict[str, Any]:
        who = actor or "anonymous"
        self.store.insert({"id": experiment.id, "kind": experiment.kind, "name": experiment.name,
                           "alias": experiment.alias, "status": experiment.status, "spec": experiment.spec(),
                           "state": experiment.state(), "stats": experiment.stats(), "created": experiment.created,
                           "created_by": actor}, event=("start", detail, who))
        self._register(experiment)
        self.steps[(experiment.kind, "start")] += 1
        self._record(experiment, "start", detail, who)
        return experiment.public()

    def _running(self, experiment_id: str, kind: str) -> Experiment:
        experiment = self.running.get(experiment_id)
        if experiment is not None and experiment.kind == kind:
            return experiment
        row = self.store.get(experiment_id)
        words, missing = WHAT[kind]
        if row is None or row["kind"] != kind:
            raise ServiceError(404, f"no {words} '{experiment_id}'", code=missing)
        raise ServiceError(409, f"{words} '{experiment_id}' has ended ({row['status']})", code="experiment_ended")

    def control(self, experiment_id: str, kind: str, action: str, actor: str | None,
                promote: str | None = None) -> dict[str, Any]:
        """A person's step: pause, resume or abort a rollout; stop an A/B test, promoting a version or not."""
        experiment = self._running(experiment_id, kind)
        by = f" by {actor}" if actor else ""
        if action == "pause":
            if experiment.status == "paused":
                return experiment.public()
            step = Step("pause", {"reason": f"paused{by}"}, "paused")
        elif action == "resume":
            if experiment.status == "running":
                return experiment.public()
            step = Step("resume", {"reason": f"resumed{by}"}, "running")
        elif action == "abort":
            step = Step("abort", {"reason": f"aborted{by}; every request goes to the stable version"}, "aborted")
        elif promote is not None:
            version = self._stored_version(experiment.name, promote, "promote")
            if version not in experiment.versions():
                raise ServiceError(400, f"{version} is not a variant of {experiment_id}", code="not_a_variant",
                                   param="promote")
            step = Step("promote", {"version": version, "reason": f"{version} promoted{by}"}, "concluded", version)
        else:
            step = Step("stop", {"reason": f"stopped{by}; the alias stays where it was"}, "stopped")
        try:
            self._take(experiment, step, actor or "anonymous", time.time())
        except RegistryError as exc:
            raise ServiceError(exc.status, exc.message, code=exc.code) from None
        return experiment.public()

    def target_of(self, experiment_id: str) -> tuple[str, tuple[str, ...]] | None:
        """(registered name, versions taking part) of a running experiment; None for any other id."""
        experiment = self.running.get(experiment_id)
        return (experiment.name, experiment.versions()) if experiment is not None else None

    def describe(self, experiment_id: str, kind: str) -> dict[str, Any]:
        experiment = self.running.get(experiment_id)
        if experiment is None or experiment.kind != kind:
            row = self.store.get(experiment_id)
            if row is None or row["kind"] != kind:
                words, missing = WHAT[kind]
                raise ServiceError(404, f"no {words} '{experiment_id}'", code=missing)
            experiment = _build(row)
        return {**experiment.public(), "events": self.store.events(experiment_id)}

    def listing(self, kind: str, limit: int) -> list[dict[str, Any]]:
        """Newest first; a running one as it is in memory (its counts may be newer than the table's)."""
        return [self.running[row["id"]].public() if row["id"] in self.running else _build(row).public()
                for row in self.store.list(kind, limit)]


class ExperimentsCollector(Collector):
    """Prometheus figures read from the running experiments at scrape time."""

    def __init__(self, experiments: Experiments) -> None:
        self.experiments = experiments

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        percent = GaugeMetricFamily("modelyard_rollout_canary_percent",
                                    "The share of a running rollout's traffic its new version gets",
                                    labels=["rollout", "model", "alias", "version"])
        requests = CounterMetricFamily("modelyard_experiment_requests",
                                       "Requests a running experiment counted, per version and outcome",
                                       labels=["experiment", "kind", "model", "version", "outcome"])
        for experiment in list(self.experiments.running.values()):
            if isinstance(experiment, Rollout):
                percent.add_metric([experiment.id, experiment.name, experiment.alias, experiment.definition.version],
                                   experiment.percent)
                per_version = {experiment.stable: experiment.overall["stable"],
                               experiment.definition.version: experiment.overall["canary"]}
            else:
                assert isinstance(experiment, AbTest)
                per_version = experiment.variant_stats
            for version, counts in per_version.items():
                for outcome, value in (("success", counts.successes), ("failure", counts.failures)):
                    requests.add_metric([experiment.id, experiment.kind, experiment.name, version, outcome], value)
        steps = CounterMetricFamily("modelyard_experiment_steps", "Steps experiments took since the start "
                                    "(start, advance, rollback, complete, pause, resume, abort, promote, stop)",
                                    labels=["kind", "action"])
        for (kind, action), count in sorted(self.experiments.steps.items()):
            steps.add_metric([kind, action], count)
        yield percent
        yield requests
        yield steps
