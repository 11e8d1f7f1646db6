"""What each model really used the last time it ran: its peak memory and its
load time, kept in state/orchestrator.db so that a restarted orchestrator
still knows. The scheduler sizes a model with no explicit memory_gb by its
footprint, and prices an eviction by the victim's load time.

A footprint belongs to one configuration of a model (its fingerprint): change
the engine, weights, arguments or GPU count and it is measured afresh.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from core.config import ModelConfig
from core.storage import open_database


@dataclass(frozen=True)
class Footprint:
    memory_gb: float  # the peak seen, on the GPUs (all together) or in host memory
    on_gpu: bool
    load_seconds: float | None


def fingerprint(model: ModelConfig, gpus: int) -> str:
    """What decides a model's footprint: not its name, TTL or aliases."""
    relevant = model.model_dump(mode="json", include={"engine", "model", "cmd", "args", "env"})
    relevant["gpus"] = gpus
    if model.lora is not None:  # LoRA slots take memory; the adapters themselves come and go
        relevant["lora"] = model.lora.settings()
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _create_footprints(db: sqlite_utils.Database) -> None:
    db["footprints"].create(
        {
            "model_id": str,
            "fingerprint": str,
            "memory_gb": float,
            "on_gpu": int,
            "load_seconds": float,
            "measured_at": float,
        },
        pk=("model_id", "fingerprint"),
    )


MIGRATIONS = [_create_footprints]


class Footprints:
    """Reads are served from memory (they happen under the placement lock);
    writes go to sqlite and belong in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, MIGRATIONS)
        self._write = threading.Lock()
        self._known: dict[tuple[str, str], Footprint] = {
            (row["model_id"], row["fingerprint"]): Footprint(row["memory_gb"], bool(row["on_gpu"]), row["load_seconds"])
            for row in self._db["footprints"].rows
        }

    def get(self, model_id: str, print_: str) -> Footprint | None:
        return self._known.get((model_id, print_))

    def record(self, model_id: str, print_: str, footprint: Footprint) -> None:
        """Store footprint (blocking: call it from a worker thread)."""
        self._known[(model_id, print_)] = footprint
        with self._write:
            self._db["footprints"].upsert(
                {
                    "model_id": model_id,
                    "fingerprint": print_,
                    "memory_gb": footprint.memory_gb,
                    "on_gpu": int(footprint.on_gpu),
                    "load_seconds": footprint.load_seconds,
                    "measured_at": time.time(),
                },
                pk=("model_id", "fingerprint"),
            )

    def close(self) -> None:
        with self._write:
            self._db.close()
