"""The regressor method: XGBoost models that learn the heuristic's error.

Each metric gets a model of log(measured / heuristic) from the features the
seed names (model size and shape, hardware figures, engine configuration,
workload) plus the heuristic's own prediction. The prediction is then the
heuristic's times exp(correction): far from the measured points the trees'
corrections stay bounded by what was seen, so the roofline's scaling carries
the extrapolation instead of a tree's flat edge.

A device with no measured record keeps the heuristic's prediction (the
result says which method each number came from): a correction learned on a
CPU says nothing of a GPU.

Models are saved with XGBoost's own JSON format (no pickle), one file per
metric, beside a small meta.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from models.simulator.deployment import Deployment, Topology, Workload
from models.simulator.hardware import Device
from models.simulator.heuristic import Prediction, predict
from models.simulator.model_spec import ModelSpec
from models.simulator.records import METRICS, Record

MIN_RECORDS = 3
PARAMS = {"objective": "reg:squarederror", "max_depth": 3, "eta": 0.1, "min_child_weight": 1.0,
          "lambda": 1.0, "nthread": 1, "seed": 0}
ROUNDS = 150
LOO_LIMIT = 60  # records up to which the evaluation is leave-one-out; 10-fold beyond
FOLDS = 10
QUANT_BITS = {None: 16, "fp8": 8, "int8": 8, "int4": 4}
FEATURES = ("log_params", "log_active_params", "layers", "hidden", "kv_width", "is_cpu", "log_bandwidth",
            "log_tflops", "memory_gb", "tensor_parallel", "pipeline_parallel", "max_num_seqs", "block_size",
            "chunked_prefill", "prefix_caching", "weight_bits", "input_tokens", "output_tokens", "concurrency",
            "log_h_ttft", "log_h_tpot")


DeviceKey = tuple[str, str, str, float]  # name, kind, vendor, memory GB


def device_key(device: Device) -> DeviceKey:
    return (device.name, device.kind, device.vendor, float(device.memory_gb))


class RegressorError(ValueError):
    """Too few records to train on, or saved models that cannot be read."""


def features(model: ModelSpec, topology: Topology, deployment: Deployment, workload: Workload,
             heuristic: Prediction) -> list[float]:
    device = topology.device
    return [
        math.log(model.params), math.log(model.active_params), model.layers, model.hidden,
        model.kv_heads * model.head_dim, float(device.kind == "cpu"), math.log(device.bandwidth_gbps),
        math.log(device.peak_tflops(deployment.quantization)), device.memory_gb, deployment.tensor_parallel,
        deployment.pipeline_parallel, deployment.max_num_seqs, deployment.block_size,
        float(deployment.chunked_prefill), float(deployment.prefix_caching),
        QUANT_BITS.get(deployment.quantization, 16), workload.input_tokens, workload.output_tokens,
        workload.concurrency, math.log(heuristic.ttft_ms), math.log(heuristic.tpot_ms),
    ]


def _heuristic_values(prediction: Prediction) -> dict[str, float]:
    return {name: getattr(prediction, name) for name in METRICS}


def _rows(records: list[Record]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows, targets = [], {name: [] for name in METRICS}
    for record in records:
        heuristic = predict(record.model, record.topology, record.deployment, record.workload)
        rows.append(features(record.model, record.topology, record.deployment, record.workload, heuristic))
        expected = _heuristic_values(heuristic)
        for name in METRICS:
            targets[name].append(math.log(record.measured[name] / expected[name]))
    return np.asarray(rows, dtype=float), {name: np.asarray(values) for name, values in targets.items()}


class Regressor:
    def __init__(self, boosters: dict[str, xgb.Booster], trained_on: int,
                 devices: frozenset[DeviceKey]) -> None:
        self.boosters = boosters
        self.trained_on = trained_on
        # Corrections learned on one device say nothing of another: elsewhere the heuristic stands.
        self.devices = devices

    def knows(self, device: Device) -> bool:
        """Whether records were measured on this device: the same name, kind and vendor and
        about the same memory (every host's CPU is called host-cpu: another host's is not this one)."""
        return any(name == device.name and kind == device.kind and vendor == device.vendor
                   and abs(memory - device.memory_gb) <= 0.1 * max(memory, device.memory_gb)
                   for name, kind, vendor, memory in self.devices)

    @property
    def device_names(self) -> list[str]:
        return sorted({key[0] for key in self.devices})

    @classmethod
    def train(cls, records: list[Record]) -> Regressor:
        usable = [r for r in records if all(r.measured.get(name, 0) > 0 for name in METRICS)]
        if len(usable) < MIN_RECORDS:
            raise RegressorError(f"the regressor needs at least {MIN_RECORDS} benchmark records with every metric "
                                 f"above zero; {len(usable)} of {len(records)} are")
        matrix, targets = _rows(usable)
        boosters = {}
        for name in METRICS:
            data = xgb.DMatrix(matrix, label=targets[name], feature_names=list(FEATURES))
            boosters[name] = xgb.train(PARAMS, data, num_boost_round=ROUNDS)
        return cls(boosters, len(usable), frozenset(device_key(r.device) for r in usable))

    def predict(self, model: ModelSpec, topology: Topology, deployment: Deployment, workload: Workload,
                heuristic: Prediction | None = None) -> Prediction:
        heuristic = heuristic or predict(model, topology, deployment, workload)
        if not self.knows(topology.device):
            return heuristic
        row = xgb.DMatrix(np.asarray([features(model, topology, deployment, workload, heuristic)]),
                          feature_names=list(FEATURES))
        corrected = {name: value * math.exp(float(self.boosters[name].predict(row)[0]))
                     for name, value in _heuristic_values(heuristic).items()}
        return replace(heuristic, method="regressor", **corrected)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, booster in self.boosters.items():
            booster.save_model(str(directory / f"regressor_{name}.json"))
        (directory / "meta.json").write_text(json.dumps({"trained_on": self.trained_on, "metrics": list(METRICS),
                                                         "features": list(FEATURES),
                                                         "devices": sorted(map(list, self.devices))}))

    @classmethod
    def load(cls, directory: Path) -> Regressor | None:
        """The saved models, or None when none were saved; RegressorError when they are unreadable."""
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("features") != list(FEATURES):
                raise RegressorError("the saved regressor was trained on other features; retrain it")
            boosters = {}
            for name in METRICS:
                booster = xgb.Booster()
                booster.load_model(str(directory / f"regressor_{name}.json"))
                boosters[name] = booster
            devices = frozenset((str(n), str(k), str(v), float(m)) for n, k, v, m in meta["devices"])
            return cls(boosters, int(meta["trained_on"]), devices)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, xgb.core.XGBoostError) as exc:
            raise RegressorError(f"the saved regressor in {directory} is unreadable: {exc}") from None


def leave_one_out(records: list[Record]) -> dict[str, Any]:
    """Each record predicted by a regressor that never saw it, against the heuristic
    alone: the mean absolute percentage error per metric, and per record. One
    model per record up to LOO_LIMIT records; beyond, 10 folds, so that a long
    history does not make every retrain slower."""
    records = [r for r in records if all(r.measured.get(name, 0) > 0 for name in METRICS)]
    if len(records) < MIN_RECORDS + 1:
        raise RegressorError(f"leave-one-out needs at least {MIN_RECORDS + 1} records with every metric above "
                             f"zero; there are {len(records)}")
    folds = len(records) if len(records) <= LOO_LIMIT else FOLDS
    per_record = []
    for fold in range(folds):
        regressor = Regressor.train([r for i, r in enumerate(records) if i % folds != fold])
        per_record += [_held_out(regressor, r) for i, r in enumerate(records) if i % folds == fold]

    def mape(method: str, name: str) -> float:
        return 100 * float(np.mean([abs(r[name][method] / r[name]["measured"] - 1) for r in per_record]))

    return {
        "records": len(records),
        "method": "leave-one-out" if folds == len(records) else f"{folds}-fold",
        "mean_abs_pct_error": {method: {name: mape(method, name) for name in METRICS}
                               for method in ("heuristic", "regressor")},
        "per_record": per_record,
    }


def _held_out(regressor: Regressor, record: Record) -> dict[str, Any]:
    heuristic = predict(record.model, record.topology, record.deployment, record.workload)
    corrected = regressor.predict(record.model, record.topology, record.deployment, record.workload, heuristic)
    return {
        "workload": {"input_tokens": record.workload.input_tokens, "output_tokens": record.workload.output_tokens,
                     "concurrency": record.workload.concurrency},
        **{name: {"measured": record.measured[name], "heuristic": getattr(heuristic, name),
                  "regressor": getattr(corrected, name)} for name in METRICS},
    }
