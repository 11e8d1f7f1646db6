"""drift.db: the drift service's monitors, their event streams and their alerts.

One sqlite file owned by the drift process (core.storage.open_database: WAL,
numbered migrations). Durability: ingest commits a batch's events before it
answers, so an event the service accepted survives a kill -9; on start the
service replays each monitor's latest events into fresh windows (see
monitors.replay_count). Retention is bounded: a monitor keeps the events its
windows need plus `keep_events` more (older ones are pruned), and a fixed
window's reference, once taken from the first events, is written into the
monitor's row so that those events can go too.

Every method takes the store's lock: request threads share one connection.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from core.storage import open_database

# Columns of monitors holding JSON.
_JSON_COLUMNS = ("features", "algorithms", "window", "reference", "thresholds", "dropped")


def _create_tables(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE monitors (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            model TEXT,
            features TEXT NOT NULL,          -- [{"name", "kind": "numeric" | "categorical"}]
            algorithms TEXT NOT NULL,        -- ["psi", "ks", ...]
            window TEXT NOT NULL,            -- {"kind", "size", "reference_size"}
            reference TEXT,                  -- fixed windows: {feature: [values]}, explicit or frozen from events
            thresholds TEXT NOT NULL,        -- {algorithm: {"low", "medium", "high", "critical"}} overrides
            alert_severity TEXT NOT NULL,
            webhook TEXT,
            cooldown_seconds REAL NOT NULL,
            events_seen INTEGER NOT NULL DEFAULT 0,  -- events accepted since the stream (re)started
            dropped TEXT NOT NULL DEFAULT '{}',      -- {feature: missing, NaN or inf values since then}
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""")
    db.execute("""
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            monitor_id TEXT NOT NULL,
            ts REAL NOT NULL,
            "values" TEXT NOT NULL           -- {feature: value}; NaN, inf and missing values are null
        )""")
    db.execute("CREATE INDEX events_by_monitor ON events (monitor_id, seq)")
    db.execute("""
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            monitor_id TEXT NOT NULL,
            monitor TEXT NOT NULL,           -- the monitor's name when the alert was raised
            model TEXT,
            ts REAL NOT NULL,
            severity TEXT NOT NULL,
            features TEXT NOT NULL,          -- {feature: {"severity", "algorithm", "value", "p_value", ...}}
            drifted TEXT NOT NULL,           -- the features at or above the monitor's alert severity
            fingerprint TEXT NOT NULL,       -- severity + drifted feature set, for de-duplication
            reason TEXT NOT NULL,            -- why it was raised: first, higher_severity, new_feature, cooldown_over
            webhook_status TEXT              -- null without a webhook; pending, then the answer or the failure
        )""")
    db.execute("CREATE INDEX alerts_by_monitor ON alerts (monitor_id, ts)")
    db.execute("CREATE INDEX alerts_by_time ON alerts (ts)")


def _add_request_source(db: sqlite_utils.Database) -> None:
    # source: push (POST /drift/ingest) or requests (the orchestrator's feed);
    # feed_seq: the feed's highest seq committed here, so a batch sent again is not counted twice;
    # feed_id: which feed that seq counts in (a new drift_feed.db numbers from 1 again).
    db.execute("ALTER TABLE monitors ADD COLUMN source TEXT NOT NULL DEFAULT 'push'")
    db.execute("ALTER TABLE monitors ADD COLUMN feed_seq INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE monitors ADD COLUMN feed_id TEXT")


MIGRATIONS = [_create_tables, _add_request_source]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def finite_or_none(value: Any) -> Any:
    """value with every NaN or infinite float (however deep) replaced by None: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


class DriftStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS)
        # WAL with synchronous=NORMAL: a commit survives the process being killed (what an
        # ingest answer promises) but not an OS crash or power loss; it saves an fsync per
        # batch, which under the store's one lock was what kept concurrent ingests from scaling.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()

    # ------------------------------------------------------------ monitors

    def insert_monitor(self, row: dict[str, Any]) -> None:
        with self.lock, self.db.conn:
            self.db["monitors"].insert(self._encode(row))

    def update_monitor(self, monitor_id: str, fields: dict[str, Any], restart_stream: bool = False) -> None:
        """Change a monitor's row; restart_stream also forgets its events (a new stream begins)."""
        with self.lock, self.db.conn:
            if restart_stream:
                self.db.execute("DELETE FROM events WHERE monitor_id = ?", [monitor_id])
                fields = {**fields, "events_seen": 0, "dropped": {}}
            self.db["monitors"].update(monitor_id, self._encode(fields))

    def delete_monitor(self, monitor_id: str) -> None:
        """The monitor and its events; its alerts stay, as history."""
        with self.lock, self.db.conn:
            self.db.execute("DELETE FROM events WHERE monitor_id = ?", [monitor_id])
            self.db.execute("DELETE FROM monitors WHERE id = ?", [monitor_id])

    def monitors(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.db.query("SELECT * FROM monitors ORDER BY created, id"))
        return [self._decode(row) for row in rows]

    def set_reference(self, monitor_id: str, reference: dict[str, list[Any]]) -> None:
        with self.lock, self.db.conn:
            self.db.execute("UPDATE monitors SET reference = ? WHERE id = ?", [_json(reference), monitor_id])

    @staticmethod
    def _encode(row: dict[str, Any]) -> dict[str, Any]:
        return {key: (_json(value) if key in _JSON_COLUMNS and value is not None else value)
                for key, value in row.items()}

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        return {key: (json.loads(value) if key in _JSON_COLUMNS and value is not None else value)
                for key, value in row.items()}

    # ------------------------------------------------------------ events

    def append_events(self, monitor_id: str, ts: float, events: Sequence[dict[str, Any]],
                      dropped: dict[str, int], feed: tuple[str, int] | None = None) -> None:
        """Commit a batch (all or nothing), counting it in the monitor's events_seen;
        dropped is the monitor's new per-feature count of missing values;
        feed, for a batch of the request feed: its feed id and the highest seq in it."""
        feed_id, feed_seq = feed if feed is not None else (None, None)
        encoded = [(monitor_id, ts, _json(event)) for event in events]
        with self.lock, self.db.conn:
            self.db.conn.executemany('INSERT INTO events (monitor_id, ts, "values") VALUES (?, ?, ?)', encoded)
            self.db.execute("UPDATE monitors SET events_seen = events_seen + ?, dropped = ?, "
                            "feed_seq = COALESCE(?, feed_seq), feed_id = COALESCE(?, feed_id) WHERE id = ?",
                            [len(events), _json(dropped), feed_seq, feed_id, monitor_id])

    def latest_events(self, monitor_id: str, count: int) -> list[dict[str, Any]]:
        """The monitor's latest `count` events' values, oldest first."""
        if count <= 0:
            return []
        with self.lock:
            rows = self.db.execute(
                'SELECT "values" FROM events WHERE monitor_id = ? ORDER BY seq DESC LIMIT ?', [monitor_id, count]
            ).fetchall()
        return [json.loads(values) for (values,) in reversed(rows)]

    def count_events(self, monitor_id: str) -> int:
        with self.lock:
            return int(self.db.execute("SELECT count(*) FROM events WHERE monitor_id = ?", [monitor_id]).fetchone()[0])

    def prune_events(self, monitor_id: str, keep: int) -> int:
        """Delete all but the monitor's latest `keep` events; how many went."""
        with self.lock, self.db.conn:
            cursor = self.db.execute(
                "DELETE FROM events WHERE monitor_id = ? AND seq < ("
                "SELECT seq FROM events WHERE monitor_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                [monitor_id, monitor_id, max(keep - 1, 0)],
            )
            return int(cursor.rowcount or 0)

    # ------------------------------------------------------------ alerts

    def insert_alert(self, row: dict[str, Any]) -> int:
        encoded = {**row, "features": _json(finite_or_none(row["features"])), "drifted": _json(row["drifted"])}
        with self.lock, self.db.conn:
            return int(self.db["alerts"].insert(encoded).last_pk)

    def set_webhook_status(self, alert_id: int, status: str) -> None:
        with self.lock, self.db.conn:
            self.db.execute("UPDATE alerts SET webhook_status = ? WHERE id = ?", [status, alert_id])

    def last_alert(self, monitor_id: str) -> dict[str, Any] | None:
        rows = self.alerts(monitor_ids=[monitor_id], limit=1)
        return rows[0] if rows else None

    def alerts(self, monitor_ids: Iterable[str] | None = None, since: float | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        clauses, params = [], []
        if monitor_ids is not None:
            ids = list(monitor_ids)
            clauses.append(f"monitor_id IN ({', '.join('?' * len(ids))})" if ids else "0")
            params.extend(ids)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.lock:
            rows = list(self.db.query(f"SELECT * FROM alerts {where} ORDER BY id DESC LIMIT ?", [*params, limit]))
        return [{**row, "features": json.loads(row["features"]), "drifted": json.loads(row["drifted"])} for row in rows]


def now() -> float:
    return time.time()
