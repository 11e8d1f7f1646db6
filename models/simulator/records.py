"""Benchmark records: one measured point (a model on a device with a
deployment, under a workload, and what was measured), as the regressor
learns from them and as simulator.db and data/measured.jsonl keep them."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from models.simulator.deployment import Deployment, Topology, Workload
from models.simulator.hardware import Device
from models.simulator.model_spec import ModelSpec

METRICS = ("ttft_ms", "tpot_ms", "throughput_per_user", "e2e_latency_s", "total_throughput")
SHIPPED = Path(__file__).resolve().parent / "data" / "measured.jsonl"


class RecordError(ValueError):
    """A record that cannot be read back (a field missing or of the wrong kind)."""


@dataclass(frozen=True)
class Record:
    model: ModelSpec
    device: Device
    deployment: Deployment
    workload: Workload  # lengths and concurrency; targets do not matter here
    measured: dict[str, float]  # METRICS
    source: str = ""  # what produced it: "shipped", "job <id>"

    @property
    def topology(self) -> Topology:
        return Topology(self.device, devices_per_node=self.deployment.devices)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.as_dict(),
            "device": self.device.as_dict(),
            "deployment": self.deployment.as_dict(),
            "workload": {"input_tokens": self.workload.input_tokens, "output_tokens": self.workload.output_tokens,
                         "concurrency": self.workload.concurrency},
            "measured": dict(self.measured),
            "source": self.source,
        }


def record_from_dict(data: Any) -> Record:
    try:
        device = dict(data["device"])
        device["aliases"] = tuple(device.get("aliases", ()))
        measured = {name: float(data["measured"][name]) for name in METRICS}
        return Record(
            model=ModelSpec(**_known(ModelSpec, data["model"])),
            device=Device(**_known(Device, device)),
            deployment=Deployment(**_known(Deployment, data["deployment"])),
            workload=Workload(**_known(Workload, data["workload"])),
            measured=measured,
            source=str(data.get("source", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"not a benchmark record: {type(exc).__name__}: {exc}") from None


def _known(cls: type, data: Any) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in dict(data).items() if key in names}


def read_jsonl(path: Path) -> list[Record]:
    """Records of a JSON-lines file; a bad line is an error naming the line."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(record_from_dict(json.loads(line)))
            except (ValueError, RecordError) as exc:
                raise RecordError(f"{path}:{number}: {exc}") from None
    return records


def shipped_records() -> list[Record]:
    """The measured dataset of this project's own runs that ships with it."""
    return read_jsonl(SHIPPED) if SHIPPED.is_file() else []
