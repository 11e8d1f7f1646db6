"""Alerts: when a monitor's worst severity reaches its alert severity.

Each evaluation sets the Prometheus gauge modelyard_drift_severity{monitor,
model} (0 none .. 4 critical). An alert is raised when the severity is at or
above the monitor's alert_severity (default medium) and, within the monitor's
cooldown (default 300 s) after its previous alert, only when it says
something new:

    no previous alert, or the cooldown is over      alert (first, cooldown_over)
    a higher severity than the previous alert        alert (higher_severity)
    a drifted feature the previous alert lacked      alert (new_feature)
    otherwise (same or lower severity, same or       no alert: counted in
    fewer drifted features)                          modelyard_drift_alerts_suppressed_total

"Drifted features" are those at or above the alert severity; the pair
(severity, drifted features) is the alert's fingerprint. Each alert is a row
in drift.db's alerts table, a count in modelyard_drift_alerts_total{monitor,
severity}, a structured log line, and, when the monitor has a webhook, a
POST of the alert as JSON sent in the background (short timeout; the outcome
is logged and kept in the alert's webhook_status; no retries). A severity
falling back below the threshold raises nothing: the gauge shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from core.logs import log_event
from models.drift.measures import Severity
from models.drift.monitors import Evaluation, Monitor, bad
from models.drift.store import DriftStore, finite_or_none

log = logging.getLogger("modelyard.drift.alerts")


def check_webhook(url: str | None) -> str | None:
    """A webhook must be an absolute http(s) URL without credentials in it (400 otherwise)."""
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise bad("webhook has an invalid port", "webhook") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("webhook must be an absolute http:// or https:// URL", "webhook")
    if parts.username or parts.password:
        raise bad("webhook must not carry credentials in its URL (they would be shown to every reader)", "webhook")
    return url


def private_address(url: str) -> str | None:
    """The first loopback, private, link-local or reserved address the URL's
    host resolves to, or None: webhooks go to such places only when
    --allow-private-webhooks says so (otherwise whoever may create a monitor
    could make this service call the host's internal endpoints)."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return None  # it will fail to connect, and say so
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            return address
    return None


def fingerprint(severity: Severity, drifted: list[str]) -> str:
    return hashlib.sha256(f"{severity}|{'|'.join(sorted(drifted))}".encode()).hexdigest()[:16]


def decide(severity: Severity, drifted: list[str], threshold: Severity, cooldown: float,
           last: dict[str, Any] | None, now: float) -> tuple[bool, str]:
    """(raise an alert?, why) under the rules in this module's docstring."""
    if severity.rank < threshold.rank:
        return False, "below_threshold"
    if last is None:
        return True, "first"
    if now - float(last["ts"]) >= cooldown:
        return True, "cooldown_over"
    if severity.rank > Severity(last["severity"]).rank:
        return True, "higher_severity"
    if set(drifted) - set(last["drifted"]):
        return True, "new_feature"
    if fingerprint(severity, drifted) == last["fingerprint"]:
        return False, "duplicate"
    return False, "cooldown"


def public_alert(row: dict[str, Any]) -> dict[str, Any]:
    """An alerts row as the API shows it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(row["ts"])) + f".{int(row['ts'] % 1 * 1000):03d}Z"
    return {**row, "time": stamp}


class Alerts:
    """The gauges and counters, and the alerts of every monitor."""

    def __init__(self, store: DriftStore, registry: CollectorRegistry, webhook_timeout: float = 5.0,
                 allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self.store = store
        self.webhook_timeout = webhook_timeout
        self.severity = Gauge("modelyard_drift_severity", "A drift monitor's worst severity: 0 none .. 4 critical",
                              ["monitor", "model"], registry=registry)
        self.model_severity = Gauge("modelyard_drift_model_severity",
                                    "The worst severity over the drift monitors of a model: 0 none .. 4 critical",
                                    ["model"], registry=registry)
        self.alerts = Counter("modelyard_drift_alerts", "Drift alerts raised", ["monitor", "severity"],
                              registry=registry)
        self.suppressed = Counter("modelyard_drift_alerts_suppressed",
                                  "Drift alerts not raised: within the cooldown and nothing new", ["monitor", "reason"],
                                  registry=registry)
        self.events = Counter("modelyard_drift_events", "Events accepted by a drift monitor", ["monitor"],
                              registry=registry)
        self.dropped = Counter("modelyard_drift_dropped_values",
                               "NaN, inf or null feature values dropped at ingest", ["monitor"], registry=registry)
        self.webhook_failures = Counter("modelyard_drift_webhook_failures", "Alert webhooks that failed",
                                        ["monitor"], registry=registry)

    def observe(self, monitor: Monitor, evaluation: Evaluation) -> dict[str, Any] | None:
        """Set the gauge; raise and record an alert if the rules say so. Called
        with the monitor's lock held, right after the evaluation."""
        config = monitor.config
        self.set_monitor(config.name, config.model, evaluation.severity)
        threshold = Severity(config.alert_severity)
        drifted = sorted(name for name, status in evaluation.features.items()
                         if status.severity.rank >= threshold.rank)
        now = time.time()
        raise_it, reason = decide(evaluation.severity, drifted, threshold, config.cooldown_seconds,
                                  monitor.last_alert, now)
        if not raise_it:
            if reason != "below_threshold":
                self.suppressed.labels(config.name, reason).inc()
            return None
        row = {"monitor_id": config.id, "monitor": config.name, "model": config.model, "ts": now,
               "severity": str(evaluation.severity), "drifted": drifted,
               "features": {name: status.summary() for name, status in evaluation.features.items()},
               "fingerprint": fingerprint(evaluation.severity, drifted), "reason": reason,
               "webhook_status": "pending" if config.webhook else None}
        row = finite_or_none(row)
        row["id"] = self.store.insert_alert(row)
        alert = public_alert(row)
        monitor.last_alert = alert
        self.alerts.labels(config.name, row["severity"]).inc()
        log_event(log, "drift alert", logging.WARNING, alert_id=row["id"], monitor=config.name,
                  monitor_id=config.id, model=config.model, severity=row["severity"], drifted=drifted,
                  reason=reason, events_seen=evaluation.events_seen)
        return alert

    def set_monitor(self, name: str, model: str | None, severity: Severity) -> None:
        self.severity.labels(name, model or "").set(severity.rank)

    def set_model(self, model: str, severity: Severity) -> None:
        self.model_severity.labels(model).set(severity.rank)

    def forget(self, name: str, model: str | None) -> None:
        """Drop a monitor's gauge series (deleted, renamed or moved to another model)."""
        try:
            self.severity.remove(name, model or "")
        except KeyError:
            pass

    def forget_model(self, model: str) -> None:
        try:
            self.model_severity.remove(model)
        except KeyError:
            pass

    async def send_webhook(self, url: str, alert: dict[str, Any]) -> None:
        """POST the alert; never raises: the outcome is logged and stored."""
        began = time.monotonic()
        try:
            refused = None if self.allow_private else await asyncio.to_thread(private_address, url)
            if refused is not None:
                raise PermissionError(f"{urlsplit(url).hostname} is a private address ({refused}); "
                                      "start the service with --allow-private-webhooks to send there")
            async with httpx.AsyncClient(timeout=self.webhook_timeout) as client:
                # The whole POST, not each read: a server that trickles bytes cannot hold the task.
                response = await asyncio.wait_for(
                    client.post(url, json={"type": "modelyard.drift.alert", "alert": alert}), self.webhook_timeout)
            status = f"{response.status_code}"
            failed = not response.is_success
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as error:
            status, failed = f"failed: {type(error).__name__}: {error}"[:500], True
        except Exception as error:  # noqa: BLE001 - a webhook must never take the service down
            status, failed = f"failed: {type(error).__name__}"[:500], True
        log_event(log, "drift webhook " + ("failed" if failed else "sent"), logging.WARNING if failed else logging.INFO,
                  alert_id=alert["id"], monitor=alert["monitor"], status=status,
                  seconds=round(time.monotonic() - began, 3))
        if failed:
            self.webhook_failures.labels(alert["monitor"]).inc()
        try:
            await asyncio.to_thread(self.store.set_webhook_status, alert["id"], status)
        except Exception as error:  # noqa: BLE001 - e.g. the store closed on shutdown
            log_event(log, "could not record a webhook's outcome", logging.WARNING, error=str(error))
