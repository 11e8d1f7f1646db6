"""experiments.db: every A/B test and rollout (its spec, where it stands, its
counts), what happened to each (events), and the feedback users gave.

The controller keeps the running ones in memory and writes here: a change of
state at once, the counts every few seconds. At start it reads back the
running ones, so a restart resumes a rollout at its stage with its counts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlite_utils

from core.storage import open_database

ACTIVE = ("running", "paused")


def _create_tables(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE experiments (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            status TEXT NOT NULL,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            stats TEXT NOT NULL,
            reason TEXT,
            created REAL NOT NULL,
            created_by TEXT,
            updated REAL NOT NULL,
            ended REAL
        )"""
    )
    db.execute("CREATE INDEX experiments_status ON experiments (status)")
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            experiment TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL,
            actor TEXT
        )"""
    )
    db.execute("CREATE INDEX events_experiment ON events (experiment, id)")
    db.execute(
        """CREATE TABLE feedback (
            owner TEXT NOT NULL,
            request_id TEXT NOT NULL,
            ts REAL NOT NULL,
            rated_by TEXT,
            model TEXT NOT NULL,
            experiment TEXT,
            variant TEXT,
            score REAL NOT NULL,
            comment TEXT,
            PRIMARY KEY (owner, request_id)
        )"""
    )


MIGRATIONS = [_create_tables]


class FeedbackExists(Exception):
    """Feedback for this request was given already."""


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "spec": json.loads(row["spec"]), "state": json.loads(row["state"]),
            "stats": json.loads(row["stats"])}


class ExperimentStore:
    def __init__(self, path: Path) -> None:
        self.db = open_database(path, MIGRATIONS)
        self._lock = threading.Lock()  # one connection; the API's reads may come from worker threads

    def close(self) -> None:
        self.db.conn.close()

    def insert(self, record: dict[str, Any], event: tuple[str, dict[str, Any], str | None]) -> None:
        """A new experiment (id, kind, name, alias, status, spec, state, stats, created, created_by) and
        its first event, in one transaction."""
        action, detail, actor = event
        with self._lock, self.db.atomic():
            self.db.execute("INSERT INTO events (ts, experiment, action, detail, actor) VALUES (?, ?, ?, ?, ?)",
                            [record["created"], record["id"], action, json.dumps(detail), actor])
            self.db.execute(
                "INSERT INTO experiments (id, kind, name, alias, status, spec, state, stats, reason, created, "
                "created_by, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                [record["id"], record["kind"], record["name"], record["alias"], record["status"],
                 json.dumps(record["spec"]), json.dumps(record["state"]), json.dumps(record["stats"]),
                 record["created"], record["created_by"], record["created"]],
            )

    def save(self, experiment_id: str, *, status: str, state: dict[str, Any], stats: dict[str, Any],
             reason: str | None, ended: float | None, now: float,
             event: tuple[str, dict[str, Any], str | None]) -> None:
        """Where an experiment stands now, and the event that brought it there, in one transaction."""
        action, detail, actor = event
        with self._lock, self.db.atomic():
            self.db.execute(
                "UPDATE experiments SET status = ?, state = ?, stats = ?, reason = ?, ended = ?, updated = ? "
                "WHERE id = ?",
                [status, json.dumps(state), json.dumps(stats), reason, ended, now, experiment_id],
            )
            self.db.execute("INSERT INTO events (ts, experiment, action, detail, actor) VALUES (?, ?, ?, ?, ?)",
                            [now, experiment_id, action, json.dumps(detail), actor])

    def save_stats(self, stats: dict[str, dict[str, Any]], now: float) -> None:
        """The counts of several experiments (id -> stats), in one transaction."""
        if not stats:
            return
        with self._lock, self.db.atomic():
            self.db.conn.executemany("UPDATE experiments SET stats = ?, updated = ? WHERE id = ?",
                                     [(json.dumps(s), now, experiment_id) for experiment_id, s in stats.items()])

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self.db.query(f"SELECT * FROM experiments WHERE status IN {ACTIVE} ORDER BY created"))
        return [_row(row) for row in rows]

    def get(self, experiment_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("SELECT * FROM experiments WHERE id = ?", [experiment_id]))
        return _row(rows[0]) if rows else None

    def list(self, kind: str, limit: int) -> list[dict[str, Any]]:
        """Of one kind, newest first."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM experiments WHERE kind = ? ORDER BY created DESC, rowid DESC "
                                      "LIMIT ?", [kind, limit]))
        return [_row(row) for row in rows]

    def events(self, experiment_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Oldest first: the story of one experiment."""
        with self._lock:
            rows = list(self.db.query("SELECT ts, action, detail, actor FROM events WHERE experiment = ? "
                                      "ORDER BY id DESC LIMIT ?", [experiment_id, limit]))
        return [{**row, "detail": json.loads(row["detail"])} for row in reversed(rows)]

    def add_feedback(self, owner: str, request_id: str, *, ts: float, rated_by: str | None, model: str,
                     experiment: str | None, variant: str | None, score: float, comment: str | None) -> None:
        """A score of the request request_id of the key owner ("" without auth: request ids come from
        clients too, so only the pair is one request). FeedbackExists if it has one already (one per
        request: a vote is not repeated)."""
        try:
            with self._lock, self.db.atomic():
                self.db.execute(
                    "INSERT INTO feedback (owner, request_id, ts, rated_by, model, experiment, variant, score, "
                    "comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [owner, request_id, ts, rated_by, model, experiment, variant, score, comment],
                )
        except sqlite3.IntegrityError:
            raise FeedbackExists(request_id) from None
