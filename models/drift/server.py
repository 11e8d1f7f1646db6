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

from fastapi import FastAPI, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Run as a script by the engine's own interpreter: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

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
from models.drift.store import DriftStore, finite_or_none  # noqa: E402

log = logging.getLogger("modelyard.drift")

ROOT = Path(__file__).resolve().parents[2]


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
        parser.add_argument("--allow-private-webhooks", action="store_true",
                            help="let webhooks go to loopback, private and link-local addresses (default: refused)")

    # ------------------------------------------------------------ start

    def db_path(self) -> Path:
        return Path(self.options.db) if self.options.db else Path(self.options.state_dir) / "drift.db"

    def load(self) -> None:
        """Open drift.db and rebuild every monitor's windows from its latest events."""
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
            self.alerts.set_monitor(monitor.config.name, monitor.config.model, monitor.evaluate().severity)
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
            thresholds = {key: spec.model_dump() for key, spec in body.thresholds.items()}
            drift_config(thresholds)  # 400 when the overrides do not line up
            now = time.time()
            made = MonitorConfig(
                id=f"mon_{uuid.uuid4().hex[:12]}", name=body.name, model=body.model,
                features=[feature.model_dump() for feature in body.features],
                algorithms=list(body.algorithms or ALL_ALGORITHMS), window=window_row(body.window),
                reference=reference, thresholds=thresholds, alert_severity=body.alert_severity,
                webhook=check_webhook(body.webhook), cooldown_seconds=body.cooldown_seconds, created=now, updated=now,
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
        monitor = self._find(ref)
        return {**monitor.public(), "severity": self._severity(monitor)}

    async def update_monitor(self, ref: str, body: MonitorPatch) -> dict[str, Any]:
        monitor = self._find(ref)
        return await asyncio.to_thread(self._update, monitor, body)

    def _update(self, monitor: Monitor, body: MonitorPatch) -> dict[str, Any]:
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
            self.alerts.set_monitor(config.name, config.model, monitor.evaluate().severity)
            self._refresh_models({old.model, config.model})
            log_event(log, "drift monitor updated", monitor=config.name, monitor_id=config.id,
                      fields=sorted(given), restarted=restart)
            return {**monitor.public(), "severity": self._severity(monitor), "restarted": restart}

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
        return finite_or_none(self._find(ref).status())

    async def monitor_report(self, ref: str) -> dict[str, Any]:
        monitor = self._find(ref)
        return finite_or_none(await asyncio.to_thread(monitor.report))

    async def model_status(self, model: str) -> dict[str, Any]:
        self._require_ready()
        monitors = [m for m in self.monitors.values() if m.config.model == model]
        if not monitors:
            raise ServiceError(404, f"no drift monitor watches model {model!r}", "model_not_monitored", "model")
        return {"model": model, "severity": self._model_severity(model),
                "monitors": [{"id": m.config.id, "name": m.config.name, "severity": self._severity(m),
                              "events_seen": m.events_seen} for m in monitors]}

    async def ingest(self, body: IngestRequest) -> dict[str, Any]:
        monitor = self._find(body.monitor, param="monitor")
        # Batches for one monitor wait their turn here, holding no worker thread: many
        # concurrent ingests cannot take every thread from the other monitors and routes.
        async with monitor.turn:
            result, alert = await asyncio.to_thread(self._ingest, monitor, body)
        if alert is not None and monitor.config.webhook:
            assert self.alerts is not None
            task = asyncio.create_task(self.alerts.send_webhook(monitor.config.webhook, alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return result

    def _ingest(self, monitor: Monitor, body: IngestRequest) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Validate, commit, feed, evaluate, alert: one batch, under the monitor's lock."""
        assert self.store is not None and self.alerts is not None
        with monitor.lock:
            if monitor.deleted:
                raise ServiceError(404, f"drift monitor {monitor.config.id!r} was deleted", "monitor_not_found",
                                   "monitor")
            events, dropped, missing = monitor.check_events(body.events)
            # Committed before anything else: an answered event survives a kill.
            self.store.append_events(monitor.config.id, body.ts if body.ts is not None else time.time(), events,
                                     missing)
            monitor.dropped = missing
            frozen = monitor.feed(events)
            if frozen is not None:
                self.store.set_reference(monitor.config.id, frozen)
            evaluation = monitor.evaluate()
            alert = self.alerts.observe(monitor, evaluation)
            self.alerts.events.labels(monitor.config.name).inc(len(events))
            if dropped:
                self.alerts.dropped.labels(monitor.config.name).inc(dropped)
            monitor.events_since_prune += len(events)
            if monitor.events_since_prune >= max(1000, monitor.need() // 10):
                self._prune(monitor)
        if monitor.config.model:
            self.alerts.set_model(monitor.config.model, self._model_severity(monitor.config.model))
        return {"monitor": monitor.config.id, "accepted": len(events), "dropped_nan": dropped,
                "events_seen": monitor.events_seen, "severity": evaluation.severity,
                "evaluation_seconds": evaluation.seconds, "alert": alert}, alert

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
