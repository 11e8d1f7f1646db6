"""core/storage.py: a migration is applied whole, with its version bump, or
not at all, so a start that fails half-way through one can simply be retried."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from core.storage import open_database


def create_a(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE a (x INTEGER)")


def create_b_then_fail(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE b (x INTEGER)")
    db.execute("INSERT INTO a (x) VALUES (1)")
    raise RuntimeError("the second step of the migration failed")


def create_b(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE b (x INTEGER)")
    db.execute("INSERT INTO a (x) VALUES (2)")


def test_a_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_database(path, [create_a]).close()
    with pytest.raises(RuntimeError, match="second step"):
        open_database(path, [create_a, create_b_then_fail])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchall() == []
        assert db.execute("SELECT count(*) FROM a").fetchone() == (0,)
    db = open_database(path, [create_a, create_b])  # the retry applies it whole
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert [row["x"] for row in db.query("SELECT x FROM a")] == [2]
    db.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_database(path, [create_a, create_b]).close()
    with pytest.raises(RuntimeError, match="newer than this modelyard knows"):
        open_database(path, [create_a])
