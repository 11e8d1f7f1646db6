"""simulator.db: simulation runs with their ranked configurations (and the
blacklist flags feedback sets on them), benchmark jobs and the records they
measured. One sqlite file owned by the simulator process (core.storage:
WAL, numbered migrations); every method takes the store's lock because
request threads share one connection.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from core.logs import log_event
from core.storage import open_database
from models.simulator.records import Record, RecordError, record_from_dict

log = logging.getLogger("modelyard.simulator.store")


def _create_tables(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE runs (
            workflow_id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            model TEXT NOT NULL,
            method TEXT NOT NULL,            -- heuristic | regressor
            request TEXT NOT NULL,           -- the inputs as given (JSON)
            summary TEXT NOT NULL            -- model spec, devices searched, timings (JSON)
        )""")
    db.execute("""
        CREATE TABLE configurations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id TEXT NOT NULL,
            device TEXT NOT NULL,            -- the device the configuration runs on
            rank INTEGER NOT NULL,           -- 1 = best for that device
            config TEXT NOT NULL,            -- the deployment (JSON)
            metrics TEXT NOT NULL,           -- prediction, error rate, cost (JSON)
            error_rate REAL NOT NULL,
            cost_per_million_tokens REAL NOT NULL,
            throughput_per_user REAL NOT NULL,
            concurrency INTEGER NOT NULL,
            blacklisted INTEGER NOT NULL DEFAULT 0,
            feedback TEXT                    -- why it was blacklisted (OOM, crash ...)
        )""")
    db.execute("CREATE INDEX configurations_by_run ON configurations (workflow_id, rank)")
    db.execute("""
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            finished REAL,
            state TEXT NOT NULL,             -- running | done | failed | cancelled | interrupted
            request TEXT NOT NULL,           -- what to sweep (JSON)
            error TEXT,
            evaluation TEXT                  -- leave-one-out errors after retraining (JSON)
        )""")
    db.execute("""
        CREATE TABLE records (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT,
            created REAL NOT NULL,
            record TEXT NOT NULL             -- records.Record.as_dict() (JSON)
        )""")


MIGRATIONS = [_create_tables]
KEEP_RUNS = 1000  # simulation runs kept (a run stores up to top_k configurations per device)


class SimulatorStore:
    def __init__(self, path: Path) -> None:
        self.db = open_database(path, MIGRATIONS)
        self.lock = threading.Lock()
        with self.lock, self.db.conn:
            # A job that was running when the process died will never finish.
            self.db.execute("UPDATE jobs SET state = 'interrupted', finished = ? WHERE state = 'running'",
                            [time.time()])

    def close(self) -> None:
        self.db.close()

    # runs and configurations

    def save_run(self, workflow_id: str, model: str, method: str, request: dict[str, Any],
                 summary: dict[str, Any], configurations: list[dict[str, Any]], concurrency: int) -> None:
        """The run and its ranked configurations, in one transaction (sqlite-utils'
        execute commits each statement on its own outside atomic()); runs beyond the newest
        KEEP_RUNS go."""
        with self.lock, self.db.atomic():
            self.db.execute("INSERT INTO runs (workflow_id, created, model, method, request, summary) "
                            "VALUES (?, ?, ?, ?, ?, ?)", [workflow_id, time.time(), model, method,
                                                          json.dumps(request), json.dumps(summary)])
            self.db.conn.executemany(
                "INSERT INTO configurations (workflow_id, device, rank, config, metrics, error_rate, "
                "cost_per_million_tokens, throughput_per_user, concurrency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(workflow_id, item["device"], item["rank"], json.dumps(item["config"]), json.dumps(item["metrics"]),
                  item["metrics"]["error_rate"], item["metrics"]["cost_per_million_tokens"],
                  item["metrics"]["throughput_per_user"], concurrency) for item in configurations])
            old = "SELECT workflow_id FROM runs ORDER BY created DESC LIMIT -1 OFFSET ?"
            # Blacklisted configurations stay: later runs of their model still skip them.
            self.db.execute(f"DELETE FROM configurations WHERE blacklisted = 0 AND workflow_id IN ({old})",
                            [KEEP_RUNS])
            self.db.execute(f"DELETE FROM runs WHERE workflow_id IN ({old}) AND workflow_id NOT IN "
                            "(SELECT workflow_id FROM configurations)", [KEEP_RUNS])

    def run(self, workflow_id: str) -> dict[str, Any] | None:
        with self.lock:
            rows = list(self.db.query("SELECT * FROM runs WHERE workflow_id = ?", [workflow_id]))
        if not rows:
            return None
        row = rows[0]
        return {**row, "request": json.loads(row["request"]), "summary": json.loads(row["summary"])}

    def runs(self, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.db.query("SELECT workflow_id, created, model, method FROM runs "
                                      "ORDER BY created DESC LIMIT ?", [limit]))
        return rows

    def configurations(self, workflow_id: str, *, device: str | None = None, max_error_rate: float = 1.0,
                       include_blacklisted: bool = False) -> list[dict[str, Any]]:
        """The run's configurations, best first (error rate, cost, per-user throughput)."""
        where, args = ["workflow_id = ?", "error_rate <= ?"], [workflow_id, max_error_rate]
        if device is not None:
            where.append("device = ?")
            args.append(device)
        if not include_blacklisted:
            where.append("blacklisted = 0")
        with self.lock:
            rows = list(self.db.query(
                f"SELECT * FROM configurations WHERE {' AND '.join(where)} "
                "ORDER BY error_rate, cost_per_million_tokens, throughput_per_user DESC, id", args))
        return [{"id": row["id"], "device": row["device"], "rank": row["rank"], "config": json.loads(row["config"]),
                 "metrics": json.loads(row["metrics"]), "blacklisted": bool(row["blacklisted"]),
                 "feedback": row["feedback"]} for row in rows]

    def blacklist(self, workflow_id: str, config_id: int, reason: str | None) -> bool:
        """Flag one configuration of the run as failed; False when the run has no such configuration."""
        with self.lock, self.db.conn:
            cursor = self.db.execute("UPDATE configurations SET blacklisted = 1, feedback = ? "
                                     "WHERE id = ? AND workflow_id = ?", [reason or "failed", config_id, workflow_id])
        return cursor.rowcount == 1

    def unblacklist(self, workflow_id: str, config_id: int) -> bool:
        with self.lock, self.db.conn:
            cursor = self.db.execute("UPDATE configurations SET blacklisted = 0, feedback = NULL "
                                     "WHERE id = ? AND workflow_id = ?", [config_id, workflow_id])
        return cursor.rowcount == 1

    def failed_configs(self, model: str) -> list[dict[str, Any]]:
        """Deployments that failed for this model before (device + config), so new runs can skip them."""
        with self.lock:
            rows = list(self.db.query(
                "SELECT c.device, c.config, c.feedback FROM configurations c JOIN runs r USING (workflow_id) "
                "WHERE r.model = ? AND c.blacklisted = 1", [model]))
        return [{"device": row["device"], "config": json.loads(row["config"]), "feedback": row["feedback"]}
                for row in rows]

    # benchmark jobs and records

    def create_job(self, job_id: str, request: dict[str, Any]) -> None:
        with self.lock, self.db.conn:
            self.db["jobs"].insert({"id": job_id, "created": time.time(), "state": "running",
                                    "request": json.dumps(request)})

    def finish_job(self, job_id: str, state: str, *, error: str | None = None,
                   evaluation: dict[str, Any] | None = None) -> None:
        with self.lock, self.db.conn:
            self.db.execute("UPDATE jobs SET state = ?, finished = ?, error = ?, evaluation = ? WHERE id = ?",
                            [state, time.time(), error, json.dumps(evaluation) if evaluation else None, job_id])

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
            count = next(self.db.query("SELECT count(*) AS n FROM records WHERE job_id = ?", [job_id]))["n"]
        if not rows:
            return None
        row = rows[0]
        request = json.loads(row["request"])
        return {**row, "request": request, "records": count, "points": _points(request),
                "evaluation": json.loads(row["evaluation"]) if row["evaluation"] else None}

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            ids = [row["id"] for row in self.db.query("SELECT id FROM jobs ORDER BY created DESC LIMIT ?", [limit])]
        return [job for job_id in ids if (job := self.job(job_id)) is not None]

    def add_record(self, record: Record, job_id: str | None) -> None:
        with self.lock, self.db.conn:
            self.db["records"].insert({"job_id": job_id, "created": time.time(),
                                       "record": json.dumps(record.as_dict())})

    def records(self) -> list[Record]:
        """Every stored record; one that cannot be read back is left out and logged."""
        with self.lock:
            rows = list(self.db.query("SELECT id, record FROM records ORDER BY id"))
        records = []
        for row in rows:
            try:
                records.append(record_from_dict(json.loads(row["record"])))
            except (ValueError, RecordError) as exc:
                log_event(log, "a stored benchmark record is unreadable; left out", logging.WARNING, id=row["id"],
                          reason=str(exc))
        return records


def _points(request: Any) -> int | None:
    """The points a job measures (concurrency values x lengths), so that `records` reads as
    progress; None for a stored request of another shape."""
    try:
        return len(request.get("concurrency")) * len(request.get("lengths"))
    except (AttributeError, TypeError):
        return None
