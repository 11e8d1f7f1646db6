"""The drift service (issue 8): monitors over feature streams, their status,
reports and alerts, as a sibling service of the orchestrator.

    python models/drift/server.py --port P [--state-dir DIR | --db FILE]
        [--keep-events 10000] [--webhook-timeout 5]

API (JSON; errors in the OpenAI shape): see models/drift/README.md.
Storage and durability: store.py. Alert rules: alerts.py. Windows and
validation: monitors.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Run as a script by the engine's own interpreter: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# Before numpy loads: a multi-threaded BLAS spends 2-4 times the CPU on the small
# vector operations of one evaluation (scipy's wasserstein_distance), measured by
# scripts/bench.sh drift; requests to other monitors get the cores instead.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from core.base_service import BaseService  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.logs import log_event  # noqa: E402
from core.times import time_param  # noqa: E402
from models.drift.alerts import Alerts, check_webhook, public_alert  # noqa: E402
from models.drift.measures import Severity, worst  # noqa: E402
from models.drift.monitors import (  # noqa: E402
    ALL_ALGORITHMS,
    FeatureSpec,
    IngestRequest,
    Monitor,
    MonitorConfig,
    MonitorCreate,
    MonitorPatch,
    WindowSpec,
    bad,
    check_spec,
    drift_config,
    window_row,
)
from models.drift.request_source import (  # noqa: E402
    TOKEN_HEADER,
    RequestEvent,
    RequestFeed,
    check_feed_token,
    check_request_features,
)
from models.drift.store import DriftStore, finite_or_none  # noqa: E402

log = logging.getLogger("modelyard.drift")

ROOT = Path(__file__).resolve().parents[2]


# Each evaluation covers whole windows (about 8 ms at 1000 values a side, 5 features),
# whatever the batch: small batches arriving faster than this are evaluated together,
# at most EVALUATE_EVERY seconds after the first of them (scripts/bench.sh drift).
EVALUATE_EVERY = 0.1
IMMEDIATE_SHARE = 0.25  # a batch of at least this share of the window is evaluated at once
MAX_MONITORS = 200  # each holds windows of up to 100,000 values per feature: memory is the limit


class DriftService(BaseService):
    name = "drift"

    def __init__(self, options: argparse.Namespace) -> None:
        self.store: DriftStore | None = None
        self.monitors: dict[str, Monitor] = {}
        self.registry = CollectorRegistry()
        self.alerts: Alerts | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state-dir", default=os.environ.get("MODELYARD_STATE_DIR", str(ROOT / "state")),
                            help="the state directory: the database is <state-dir>/drift.db")
        parser.add_argument("--db", default=None, help="the database file (overrides --state-dir)")
        parser.add_argument("--keep-events", type=int, default=10_000,
                            help="events kept per monitor beyond what its windows need")
        parser.add_argument("--webhook-timeout", type=float, default=5.0, help="seconds per alert webhook POST")
        parser.add_argument("--evaluate-every", type=float, default=EVALUATE_EVERY,
                            help="seconds: small batches arriving faster are evaluated together (default 0.1)")
        parser.add_argument("--allow-private-webhooks", action="store_true",
                            help="let webhooks go to loopback, private and link-local addresses (default: refused)")

    # ------------------------------------------------------------ start

    def db_path(self) -> Path:
        return Path(self.options.db) if self.options.db else Path(self.options.state_dir) / "drift.db"

    def load(self) -> None:
        """Open drift.db and rebuild every monitor's windows from its latest events."""
        if self.options.evaluate_every < 0:
            raise ValueError("--evaluate-every must be >= 0")
        if self.options.keep_events < 0:
            raise ValueError("--keep-events must be >= 0")
        self.store = DriftStore(self.db_path())
        self.alerts = Alerts(self.store, self.registry, self.options.webhook_timeout,
                             self.options.allow_private_webhooks)
        began, replayed = time.monotonic(), 0
        for row in self.store.monitors():
            monitor = Monitor(MonitorConfig.from_row(row))
            replayed += self._rebuild(monitor, int(row["events_seen"]))
            monitor.last_alert = self._last_alert(monitor.config.id)
            self.monitors[monitor.config.id] = monitor
            # Observed, not only graded: an alert a deferred evaluation owed when the service stopped
            # is raised now (the restored last alert keeps it from repeating one already sent).
            self.alerts.observe(monitor, monitor.evaluate())
            self._prune(monitor)
        for model in {m.config.model for m in self.monitors.values() if m.config.model}:
            self.alerts.set_model(model, self._model_severity(model))
        log_event(log, "drift monitors restored", monitors=len(self.monitors), events_replayed=replayed,
                  seconds=round(time.monotonic() - began, 3), db=str(self.db_path()))

    def _rebuild(self, monitor: Monitor, events_seen: int) -> int:
        assert self.store is not None
        wanted = monitor.replay_count(events_seen)
        events = self.store.latest_events(monitor.config.id, wanted)
        if len(events) < wanted:
            log_event(log, "fewer stored events than the windows need", logging.WARNING,
                      monitor=monitor.config.name, wanted=wanted, found=len(events))
        frozen = monitor.replay(events, events_seen)
        if frozen is not None:  # the service stopped between storing the events and the reference
            self.store.set_reference(monitor.config.id, frozen)
        return len(events)

    def _last_alert(self, monitor_id: str) -> dict[str, Any] | None:
        assert self.store is not None
        row = self.store.last_alert(monitor_id)
        return public_alert(row) if row else None

    def _prune(self, monitor: Monitor) -> None:
        """Keep what the windows need plus --keep-events; never a fixed reference still being taken."""
        assert self.store is not None
        monitor.events_since_prune = 0
        if monitor.reference_pending:
            return
        self.store.prune_events(monitor.config.id, monitor.need() + self.options.keep_events)

    def health_details(self) -> dict[str, Any]:
        return {"monitors": len(self.monitors), "db": str(self.db_path())}

    # ------------------------------------------------------------ routes

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/drift/monitors", self.create_monitor, methods=["POST"], status_code=201)
        app.add_api_route("/drift/monitors", self.list_monitors, methods=["GET"])
        app.add_api_route("/drift/monitors/{ref}", self.get_monitor, methods=["GET"])
        app.add_api_route("/drift/monitors/{ref}", self.update_monitor, methods=["PATCH"])
        app.add_api_route("/drift/monitors/{ref}", self.delete_monitor, methods=["DELETE"])
        app.add_api_route("/drift/monitors/{ref}/status", self.monitor_status, methods=["GET"])
        app.add_api_route("/drift/monitors/{ref}/report", self.monitor_report, methods=["GET"])
        app.add_api_route("/drift/models/{model:path}/status", self.model_status, methods=["GET"])
        app.add_api_route("/drift/ingest", self.ingest, methods=["POST"])
        app.add_api_route("/drift/requests", self.ingest_requests, methods=["POST"])
        app.add_api_route("/drift/alerts", self.list_alerts, methods=["GET"])
        app.add_api_route("/metrics", self.metrics, methods=["GET"])

    def _find(self, ref: str, param: str | None = None) -> Monitor:
        """A monitor by id or by name (404 otherwise)."""
        self._require_ready()
        monitor = self.monitors.get(ref)
        if monitor is None:
            monitor = next((m for m in self.monitors.values() if m.config.name == ref), None)
        if monitor is None:
            raise ServiceError(404, f"no drift monitor {ref!r}", "monitor_not_found", param)
        return monitor

    def _name_taken(self, name: str, other_than: str | None = None) -> None:
        if any(m.config.name == name and m.config.id != other_than for m in list(self.monitors.values())):
            raise ServiceError(409, f"a drift monitor named {name!r} exists", "monitor_exists", "name")

    async def create_monitor(self, body: MonitorCreate) -> dict[str, Any]:
        self._require_ready()
        assert self.store is not None
        self._name_taken(body.name)
        if len(self.monitors) >= MAX_MONITORS:
            raise ServiceError(409, f"this service holds {MAX_MONITORS} monitors, its most; delete one first",
                               "too_many_monitors")
        store = self.store

        def make() -> MonitorConfig:  # a reference of millions of values: checked and stored off the event loop
            reference = check_spec(body.features, body.algorithms, body.window)
            if body.source == "requests":
                check_request_features(body.features)
            thresholds = {key: spec.model_dump() for key, spec in body.thresholds.items()}
            drift_config(thresholds)  # 400 when the overrides do not line up
            now = time.time()
            made = MonitorConfig(
                id=f"mon_{uuid.uuid4().hex[:12]}", name=body.name, model=body.model,
                features=[feature.model_dump() for feature in body.features],
                algorithms=list(body.algorithms or ALL_ALGORITHMS), window=window_row(body.window),
                reference=reference, thresholds=thresholds, alert_severity=body.alert_severity,
                webhook=check_webhook(body.webhook), cooldown_seconds=body.cooldown_seconds, created=now, updated=now,
                source=body.source,
            )
            store.insert_monitor(dataclasses.asdict(made))
            return made

        try:
            config = await asyncio.to_thread(make)
        except sqlite3.IntegrityError:  # a concurrent create took the name
            raise ServiceError(409, f"a drift monitor named {body.name!r} exists", "monitor_exists", "name") from None
        monitor = Monitor(config)
        self.monitors[config.id] = monitor
        await asyncio.to_thread(monitor.evaluate)
        assert self.alerts is not None
        self.alerts.set_monitor(config.name, config.model, Severity.NONE)
        log_event(log, "drift monitor created", monitor=config.name, monitor_id=config.id, model=config.model,
                  window=config.window["kind"], features=len(config.features))
        return monitor.public()

    async def list_monitors(self, model: str | None = None) -> dict[str, Any]:
        self._require_ready()
        monitors = [m for m in self.monitors.values() if model is None or m.config.model == model]
        return {"object": "list", "data": [{**m.public(), "severity": self._severity(m)} for m in monitors]}

    async def get_monitor(self, ref: str) -> dict[str, Any]:
        monitor = await self._fresh(self._find(ref))
        return {**monitor.public(), "severity": self._severity(monitor)}

    async def update_monitor(self, ref: str, body: MonitorPatch) -> dict[str, Any]:
        monitor = self._find(ref)
        async with monitor.turn:  # after an evaluation under way, not beside it
            result, alert = await asyncio.to_thread(self._update, monitor, body)
        self._send_webhook(monitor, alert)
        return result

    def _update(self, monitor: Monitor, body: MonitorPatch) -> tuple[dict[str, Any], dict[str, Any] | None]:
        assert self.store is not None and self.alerts is not None
        given = body.model_fields_set
        with monitor.lock:
            if monitor.deleted:
                raise ServiceError(404, f"drift monitor {monitor.config.id!r} was deleted", "monitor_not_found")
            old = monitor.config
            if body.name is not None:
                self._name_taken(body.name, other_than=old.id)
            for field in ("name", "features", "window", "algorithms", "alert_severity", "cooldown_seconds",
                          "thresholds"):
                if field in given and getattr(body, field) is None:
                    raise bad(f"{field} cannot be null", field)
            features = body.features if "features" in given else None
            window = body.window if "window" in given else None
            restart = features is not None or window is not None
            feature_specs = features or [_feature_spec(f) for f in old.features]
            algorithms = body.algorithms if "algorithms" in given else old.algorithms
            fields: dict[str, Any] = {"updated": time.time()}
            if features is not None and old.source == "requests":
                check_request_features(features)
            if restart:
                spec_window = window or _window_spec(old)
                reference = check_spec(feature_specs, algorithms, spec_window)
                fields.update(features=[f.model_dump() for f in feature_specs], window=window_row(spec_window),
                              reference=reference)
            else:
                check_spec(feature_specs, algorithms, _window_spec(old, keep_reference=False))
            if "algorithms" in given:
                fields["algorithms"] = list(algorithms)
            if "thresholds" in given:
                fields["thresholds"] = {key: spec.model_dump() for key, spec in (body.thresholds or {}).items()}
                drift_config(fields["thresholds"])
            if "webhook" in given:
                fields["webhook"] = check_webhook(body.webhook)
            for field in ("name", "model", "alert_severity", "cooldown_seconds"):
                if field in given:
                    fields[field] = getattr(body, field)
            try:
                self.store.update_monitor(old.id, fields, restart_stream=restart)
            except sqlite3.IntegrityError:
                raise ServiceError(409, f"a drift monitor named {body.name!r} exists", "monitor_exists",
                                   "name") from None
            config = MonitorConfig(**{**old.__dict__, **fields})
            self.alerts.forget(old.name, old.model)
            if restart:
                config.events_seen, config.dropped = 0, {}
                monitor.configure(config)
            else:
                monitor.config = config
                monitor.forget_verdicts()
            alert = None
            if monitor.stale and not restart:  # batches not evaluated yet: their alert is due now
                _, alert = self._judge(monitor)
            else:
                self.alerts.set_monitor(config.name, config.model, monitor.evaluate().severity)
            self._refresh_models({old.model, config.model})
            log_event(log, "drift monitor updated", monitor=config.name, monitor_id=config.id,
                      fields=sorted(given), restarted=restart)
            return {**monitor.public(), "severity": self._severity(monitor), "restarted": restart}, alert

    async def delete_monitor(self, ref: str) -> dict[str, Any]:
        monitor = self._find(ref)
        assert self.store is not None and self.alerts is not None

        def delete() -> None:
            with monitor.lock:
                monitor.deleted = True
                self.store.delete_monitor(monitor.config.id)

        await asyncio.to_thread(delete)
        self.monitors.pop(monitor.config.id, None)
        self.alerts.forget(monitor.config.name, monitor.config.model)
        self._refresh_models({monitor.config.model})
        log_event(log, "drift monitor deleted", monitor=monitor.config.name, monitor_id=monitor.config.id)
        return {"id": monitor.config.id, "object": "drift.monitor", "deleted": True}

    async def monitor_status(self, ref: str) -> dict[str, Any]:
        return finite_or_none((await self._fresh(self._find(ref))).status())

    async def monitor_report(self, ref: str) -> dict[str, Any]:
        monitor = await self._fresh(self._find(ref))
        return finite_or_none(await asyncio.to_thread(monitor.report))

    async def _fresh(self, monitor: Monitor) -> Monitor:
        """The monitor with the batches it has taken evaluated (not left for later)."""
        if monitor.stale:
            async with monitor.turn:
                if monitor.stale and not monitor.deleted:
                    self._send_webhook(monitor, await asyncio.to_thread(self._judge_locked, monitor))
        return monitor

    async def model_status(self, model: str) -> dict[str, Any]:
        self._require_ready()
        monitors = [m for m in self.monitors.values() if m.config.model == model]
        if not monitors:
            raise ServiceError(404, f"no drift monitor watches model {model!r}", "model_not_monitored", "model")
        for monitor in monitors:
            await self._fresh(monitor)
        return {"model": model, "severity": self._model_severity(model),
                "monitors": [{"id": m.config.id, "name": m.config.name, "severity": self._severity(m),
                              "events_seen": m.events_seen} for m in monitors]}

    async def ingest(self, body: IngestRequest) -> dict[str, Any]:
        monitor = self._find(body.monitor, param="monitor")
        if monitor.config.source == "requests":
            raise bad(f"drift monitor {monitor.config.name!r} watches the orchestrator's requests; events cannot "
                      "be pushed into it", "monitor", "monitor_fed_by_requests", 409)
        return await self._ingest_batch(monitor, body.events, body.ts if body.ts is not None else time.time())

    async def ingest_requests(self, body: RequestFeed,
                              feed_token: str | None = Header(None, alias=TOKEN_HEADER)) -> dict[str, Any]:
        """The orchestrator's request feed (orchestrator/drift_feed.py): each
        event goes to every monitor with source `requests` whose model it is
        (or that watches every model). Not reachable through the orchestrator's port."""
        check_feed_token(feed_token)
        self._require_ready()
        fed = 0
        for monitor in [m for m in self.monitors.values() if m.config.source == "requests"]:
            wanted = monitor.config.kinds
            chosen = [event for event in body.events
                      if (monitor.config.model is None or event.model == monitor.config.model)
                      and not wanted.keys().isdisjoint(event.features)]
            if not chosen:
                continue
            try:  # every event: what the monitor takes is decided under its lock (_new_in_feed)
                await self._ingest_batch(monitor, [], chosen[-1].ts, (body.feed, body.events))
                fed += 1
            except ServiceError as error:  # deleted meanwhile: the others still get theirs
                log_event(log, "request events not taken by a monitor", logging.WARNING, monitor=monitor.config.name,
                          events=len(chosen), reason=error.message)
        return {"accepted": len(body.events), "monitors_fed": fed,
                "last_seq": max((event.seq for event in body.events), default=None)}

    async def _ingest_batch(self, monitor: Monitor, events: list[dict[str, Any]], ts: float,
                            feed: tuple[str, list[RequestEvent]] | None = None) -> dict[str, Any]:
        # Batches for one monitor wait their turn here, holding no worker thread: many
        # concurrent ingests cannot take every thread from the other monitors and routes.
        async with monitor.turn:
            result, alert = await asyncio.to_thread(self._ingest, monitor, events, ts, feed)
        self._send_webhook(monitor, alert)
        if monitor.stale and not monitor.evaluation_pending:
            monitor.evaluation_pending = True
            self._track(asyncio.create_task(self._evaluate_later(monitor)))
        return result

    async def _evaluate_later(self, monitor: Monitor) -> None:
        """The evaluation the last small batches skipped, EVALUATE_EVERY after the previous one."""
        try:
            await asyncio.sleep(max(0.0, monitor.evaluated_mono + self.options.evaluate_every - time.monotonic()))
            async with monitor.turn:
                monitor.evaluation_pending = False  # a batch arriving from now on schedules the next one
                if not monitor.stale or monitor.deleted:
                    return
                alert = await asyncio.to_thread(self._judge_locked, monitor)
            self._send_webhook(monitor, alert)
        except Exception:  # noqa: BLE001 - the next batch evaluates again
            monitor.evaluation_pending = False
            log.exception("evaluating drift monitor %s failed", monitor.config.name)

    def _judge_locked(self, monitor: Monitor) -> dict[str, Any] | None:
        with monitor.lock:
            if monitor.deleted:
                return None
            _, alert = self._judge(monitor)
        if monitor.config.model:
            assert self.alerts is not None
            self.alerts.set_model(monitor.config.model, self._model_severity(monitor.config.model))
        return alert

    def _judge(self, monitor: Monitor) -> tuple[Any, dict[str, Any] | None]:
        """Evaluate (under the monitor's lock) and raise the alert it calls for, if any."""
        assert self.alerts is not None
        evaluation = monitor.evaluate()
        return evaluation, self.alerts.observe(monitor, evaluation)

    def _send_webhook(self, monitor: Monitor, alert: dict[str, Any] | None) -> None:
        if alert is not None and monitor.config.webhook:
            assert self.alerts is not None
            self._track(asyncio.create_task(self.alerts.send_webhook(monitor.config.webhook, alert)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ingest(self, monitor: Monitor, raw: list[dict[str, Any]], ts: float,
                feed: tuple[str, list[RequestEvent]] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Validate, commit, feed, evaluate, alert: one batch, under the monitor's lock.
        feed: the request feed's id and events (raw is then empty); those counted already are skipped."""
        assert self.store is not None and self.alerts is not None
        with monitor.lock:
            if monitor.deleted:
                raise ServiceError(404, f"drift monitor {monitor.config.id!r} was deleted", "monitor_not_found",
                                   "monitor")
            committed = None
            if feed is not None:
                raw, committed = self._new_in_feed(monitor, raw, feed)
                if not raw:
                    return {"monitor": monitor.config.id, "accepted": 0}, None
            events, dropped, missing = self._checked(monitor, raw, feed is not None)
            # Committed before anything else: an answered event survives a kill.
            self.store.append_events(monitor.config.id, ts, events, missing, committed)
            if committed is not None:
                monitor.config.feed_id, monitor.config.feed_seq = committed
            if not events:  # the feed's events were all refused: their seq is committed, nothing else changes
                return {"monitor": monitor.config.id, "accepted": 0}, None
            monitor.dropped = missing
            frozen = monitor.feed(events)
            if frozen is not None:
                self.store.set_reference(monitor.config.id, frozen)
            alert = None
            if (len(events) >= IMMEDIATE_SHARE * monitor.config.window["size"] or monitor.evaluation is None
                    or time.monotonic() - monitor.evaluated_mono >= self.options.evaluate_every):
                evaluation, alert = self._judge(monitor)
            else:  # evaluated with the next batches, or EVALUATE_EVERY after the last evaluation
                monitor.stale = True
                evaluation = monitor.evaluation
            self.alerts.events.labels(monitor.config.name).inc(len(events))
            if dropped:
                self.alerts.dropped.labels(monitor.config.name).inc(dropped)
            monitor.events_since_prune += len(events)
            if monitor.events_since_prune >= max(1000, monitor.need() // 10):
                self._prune(monitor)
        if monitor.config.model:
            self.alerts.set_model(monitor.config.model, self._model_severity(monitor.config.model))
        return {"monitor": monitor.config.id, "accepted": len(events), "dropped_nan": dropped,
                "events_seen": monitor.events_seen, "severity": evaluation.severity, "evaluated": not monitor.stale,
                "evaluation_seconds": evaluation.seconds, "alert": alert}, alert

    @staticmethod
    def _new_in_feed(monitor: Monitor, raw: list[dict[str, Any]], feed: tuple[str, list[RequestEvent]]
                     ) -> tuple[list[dict[str, Any]], tuple[str, int]]:
        """Under the monitor's lock, with its configuration of now (a PATCH may
        have changed its model or features): the values of the feed's events it
        has not committed yet, of its model and with one of its features, and the
        (feed id, seq) it will have committed through. A feed it has not seen (a
        new drift_feed.db) counts from the start. Features a request lacks are
        left out of its values (counted as missing)."""
        feed_id, events = feed
        since = monitor.config.feed_seq if monitor.config.feed_id in (None, feed_id) else 0
        wanted, model = monitor.config.kinds, monitor.config.model
        fresh = [{name: event.features[name] for name in wanted if name in event.features} for event in events
                 if event.seq > since and (model is None or event.model == model)]
        return [values for values in fresh if values], (feed_id, max(max(e.seq for e in events), since))

    @staticmethod
    def _checked(monitor: Monitor, raw: list[dict[str, Any]], from_feed: bool
                 ) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
        """monitor.check_events; for the request feed, an event with a value the
        monitor refuses (an embedding of another size, say) is left out rather than
        the whole batch: nobody would see a 400, and the batch is not sent again."""
        try:
            return monitor.check_events(raw)
        except ServiceError:
            if not from_feed:
                raise
        kept, reason = [], ""
        for event in raw:
            try:
                monitor.check_events([event])
                kept.append(event)
            except ServiceError as error:
                reason = error.message
        try:  # still refused together: embeddings of several sizes before the monitor's first was set
            checked = monitor.check_events(kept) if kept else ([], 0, dict(monitor.dropped))
        except ServiceError as error:
            kept, reason, checked = [], error.message, ([], 0, dict(monitor.dropped))
        log_event(log, "request events refused by a monitor", logging.WARNING, monitor=monitor.config.name,
                  refused=len(raw) - len(kept), reason=reason)
        return checked

    async def list_alerts(self, monitor: str | None = None, since: str | None = None,
                          limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        self._require_ready()
        assert self.store is not None
        ids = None
        if monitor is not None:
            found = self.monitors.get(monitor) or next(
                (m for m in self.monitors.values() if m.config.name == monitor), None)
            ids = [found.config.id] if found else [monitor]  # a deleted monitor's alerts stay, by id
        rows = await asyncio.to_thread(self.store.alerts, ids, time_param("since", since), limit)
        return {"object": "list", "data": [public_alert(row) for row in rows]}

    async def metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _severity(monitor: Monitor) -> Severity:
        return monitor.evaluation.severity if monitor.evaluation is not None else Severity.NONE

    def _model_severity(self, model: str) -> Severity:
        return worst(self._severity(m) for m in list(self.monitors.values()) if m.config.model == model)

    def _refresh_models(self, models: set[str | None]) -> None:
        assert self.alerts is not None
        for model in filter(None, models):
            left = any(m.config.model == model for m in list(self.monitors.values()))
            if left:
                self.alerts.set_model(model, self._model_severity(model))
            else:
                self.alerts.forget_model(model)


def _feature_spec(feature: dict[str, str]) -> FeatureSpec:
    return FeatureSpec(**feature)


def _window_spec(config: MonitorConfig, keep_reference: bool = True) -> WindowSpec:
    window = config.window
    spec: dict[str, Any] = {"kind": window["kind"], "size": window["size"]}
    if window["kind"] == "adwin":
        spec["delta"] = window.get("delta")
    if window["kind"] == "fixed":
        if window.get("reference_source") == "explicit" and keep_reference:
            spec["reference"] = config.reference
        elif window.get("reference_source") != "explicit":
            spec["reference_size"] = window.get("reference_size")
    return WindowSpec(**spec)


if __name__ == "__main__":
    DriftService.main()
