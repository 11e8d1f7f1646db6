"""sqlite databases: one file per process that owns it, WAL mode, and a schema
that changes only through numbered migrations (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def open_database(path: Path, migrations: Sequence[Migration]) -> sqlite_utils.Database:
    """Open (or create) the database at path and apply the migrations it lacks,
    each in its own transaction together with the version bump."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Callers use it from worker threads (never two at once: they hold a lock).
    db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False))
    db.enable_wal()
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(
            f"{path} has schema version {version}, newer than this modelyard knows ({len(migrations)}); "
            "it was written by a newer release"
        )
    for number in range(version + 1, len(migrations) + 1):
        # atomic(), not `with db.conn`: sqlite-utils' execute commits each statement by itself
        # unless a transaction is open, and Python's sqlite3 opens none before DDL.
        with db.atomic():
            migrations[number - 1](db)
            db.execute(f"PRAGMA user_version = {number}")
    return db
