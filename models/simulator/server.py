"""The performance simulator (issue 7) as a sibling service of the orchestrator:
predictions of TTFT, throughput, latency and memory of LLM deployments, the
search for the best configuration, and the benchmark job that measures this
appliance to train the regressor.

    python models/simulator/server.py --port P [--state-dir DIR] [--config models.yaml]
        [--catalog configs/hardware.yaml]

API (JSON; errors in the OpenAI shape): see models/simulator/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query

# Run as a script by the engine's own interpreter: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.base_service import BaseService  # noqa: E402
from core.config import ROOT_DIR, ConfigError, expand, load_config  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.gpu import discover  # noqa: E402
from core.logs import log_event  # noqa: E402
from models.simulator.benchmark import SweepPoint  # noqa: E402
from models.simulator.deployment import (  # noqa: E402
    Deployment,
    Topology,
    Workload,
    deployment_from_args,
    engine_defaults,
    validate_parallelism,
)
from models.simulator.hardware import Device, HostDevice, host_devices, load_catalog  # noqa: E402
from models.simulator.heuristic import predict  # noqa: E402
from models.simulator.jobs import BenchmarkJobs, Target  # noqa: E402
from models.simulator.memory import memory_breakdown  # noqa: E402
from models.simulator.model_spec import ModelConfigError, ModelSpec, load_model_spec  # noqa: E402
from models.simulator.records import RecordError, shipped_records  # noqa: E402
from models.simulator.regressor import Regressor, RegressorError  # noqa: E402
from models.simulator.schemas import (  # noqa: E402
    BenchmarkConfigRequest,
    BenchmarkRequest,
    ConfigurationsRequest,
    DeviceChoice,
    ModelRef,
    NodeConfigurationsRequest,
    RunRequest,
    WorkloadFields,
)
from models.simulator.simulate import SpaceLimits, metrics_of, powers_of_two, simulate  # noqa: E402
from models.simulator.store import SimulatorStore  # noqa: E402

# Set by the orchestrator (core/engines.py names them too; importing it would pull in aiohttp).
ORCHESTRATOR_URL_ENV = "MODELYARD_ORCHESTRATOR_URL"
SIMULATOR_TOKEN_ENV = "MODELYARD_SIMULATOR_TOKEN"
log = logging.getLogger("modelyard.simulator")


def _quantization(value: str) -> str | None:
    return None if value == "none" else value


class SimulatorService(BaseService):
    name = "simulator"

    def __init__(self, options: argparse.Namespace) -> None:
        self.store: SimulatorStore | None = None
        self.catalog: dict[str, Device] = {}
        self.host: list[HostDevice] = []
        self.regressor: Regressor | None = None
        self.jobs: BenchmarkJobs | None = None
        self.gpu_devices: dict[int, Device] = {}
        self._search_lock = threading.Lock()
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state-dir", default=os.environ.get("MODELYARD_STATE_DIR", str(ROOT_DIR / "state")),
                            help="the state directory: <state-dir>/simulator.db, <state-dir>/simulator/")
        parser.add_argument("--config", default=None, help="models.yaml, to resolve model ids (and simulated GPUs)")
        parser.add_argument("--catalog", default=None, help="the hardware catalog (default configs/hardware.yaml)")

    # ------------------------------------------------------------ start

    @property
    def state_dir(self) -> Path:
        return Path(self.options.state_dir)

    @property
    def regressor_dir(self) -> Path:
        return self.state_dir / "simulator" / "regressor"

    def load(self) -> None:
        self.catalog = load_catalog(Path(self.options.catalog) if self.options.catalog else None)
        declared = None
        if self.options.config:
            try:
                settings = load_config(self.options.config).settings
                declared = [g.model_dump() for g in settings.gpus] if settings.gpus else None
            except ConfigError as exc:  # the orchestrator runs on the copy it loaded; the GPUs are still NVML's
                log_event(log, "models.yaml cannot be read now; GPUs as NVML sees them", logging.WARNING,
                          reason=str(exc).splitlines()[0])
        inventory = discover(declared)
        self.host = host_devices(inventory, self.catalog, self.state_dir)
        # GPU index -> its device: host_devices lists GPU groups in the order their names first appear.
        names = list(dict.fromkeys(gpu.name for gpu in inventory.gpus))
        by_name = dict(zip(names, (h.device for h in self.host if h.device.kind == "gpu"), strict=False))
        self.gpu_devices = {gpu.index: by_name[gpu.name] for gpu in inventory.gpus if gpu.name in by_name}
        self.store = SimulatorStore(self.state_dir / "simulator.db")
        try:
            self.regressor = Regressor.load(self.regressor_dir)
        except RegressorError as exc:
            log_event(log, "the saved regressor is unusable; retraining", reason=str(exc))
        if self.regressor is None:
            try:
                self._set_regressor(Regressor.train(shipped_records() + self.store.records()))
            except (RegressorError, RecordError, OSError) as exc:  # the heuristic still serves
                log_event(log, "no regressor: method regressor answers 503 until a benchmark job trains one",
                          logging.WARNING, reason=str(exc))
        self.jobs = BenchmarkJobs(self.store, orchestrator_url=os.environ.get(ORCHESTRATOR_URL_ENV),
                                  token=os.environ.get(SIMULATOR_TOKEN_ENV), device_for=self._device_for,
                                  on_trained=self._set_regressor)
        log_event(log, "simulator ready", devices=[h.device.name for h in self.host],
                  regressor_records=self.regressor.trained_on if self.regressor else 0)

    def _set_regressor(self, regressor: Regressor) -> None:
        regressor.save(self.regressor_dir)
        self.regressor = regressor

    def health_details(self) -> dict[str, Any]:
        return {"devices": [h.device.name for h in self.host]}

    # ------------------------------------------------------------ routes

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/simulator/run", self.run, methods=["POST"])
        app.add_api_route("/simulator/runs", self.list_runs, methods=["GET"])
        app.add_api_route("/simulator/recommendations", self.recommendations, methods=["GET"])
        app.add_api_route("/simulator/configurations", self.configurations, methods=["POST"])
        app.add_api_route("/simulator/node-configurations", self.node_configurations, methods=["POST"])
        app.add_api_route("/simulator/benchmark-config", self.benchmark_config, methods=["POST"])
        app.add_api_route("/simulator/benchmarks", self.start_benchmark, methods=["POST"], status_code=202)
        app.add_api_route("/simulator/benchmarks", self.list_benchmarks, methods=["GET"])
        app.add_api_route("/simulator/benchmarks/{job_id}", self.get_benchmark, methods=["GET"])
        app.add_api_route("/simulator/benchmarks/{job_id}", self.cancel_benchmark, methods=["DELETE"])
        app.add_api_route("/simulator/hardware", self.hardware, methods=["GET"])
        app.add_api_route("/simulator/regressor", self.regressor_status, methods=["GET"])

    def _ready_store(self) -> SimulatorStore:
        self._require_ready()
        assert self.store is not None
        return self.store

    async def run(self, body: RunRequest) -> dict[str, Any]:
        store = self._ready_store()
        spec, model_key, entry = self._model(body)
        topologies = self._topologies(body.devices)
        workload = self._workload(body, spec, entry)
        limits = SpaceLimits(
            max_num_seqs=tuple(body.max_num_seqs) if body.max_num_seqs else SpaceLimits.max_num_seqs,
            quantizations=tuple(_quantization(q) for q in body.quantizations),
            # more replicas than users would serve nobody
            max_replicas=min(body.max_replicas or body.concurrency, body.concurrency))
        failed = {(f["device"], tuple(sorted(f["config"].items()))) for f in store.failed_configs(model_key)}
        predictor = self._predictor(body.method)
        began = time.perf_counter()

        # The genetic search's own settings mean nothing to an exhaustive one (search.py refuses them there).
        ga = {} if body.search == "exhaustive" else {"population": body.population, "generations": body.generations}

        def work() -> list[Any]:
            with self._search_lock:  # DEAP draws from the global `random`, which a search swaps for its seed's
                return simulate(spec, topologies, workload, limits=limits, predictor=predictor, method=body.search,
                                top_k=body.top_k, seed=body.seed, **ga,
                                exclude=lambda topology, config: (topology.device.name,
                                                                  tuple(sorted(config.items()))) in failed)

        try:
            outcomes = await asyncio.to_thread(work)
        except ValueError as exc:  # what the schema cannot see: an exhaustive search too large for its space
            raise ServiceError(400, str(exc), "invalid_request") from None
        found = [(o, rank, e) for o in outcomes for rank, e in enumerate(o.result.best, 1)]
        if not found:
            reasons = list(dict.fromkeys(f"{o.topology.device.name}: {reason}"
                                         for o in outcomes for reason in o.rejected.values()))
            raise ServiceError(422, "no configuration of this model fits the devices for this workload; for "
                               "example " + " | ".join(reasons[:3]), "no_feasible_configuration")
        workflow_id = uuid.uuid4().hex
        summary = {
            "model": spec.as_dict(),
            "devices": [{"device": o.topology.device.name, "count": o.topology.devices_per_node,
                         "nodes": o.topology.nodes, "search": o.result.method, "evaluations": o.result.evaluations,
                         "generations": o.result.generations, "space_size": o.result.space_size,
                         "invalid": o.result.invalid, "seconds": round(o.seconds, 4),
                         "rejected_sample": dict(list(o.rejected.items())[:5])} for o in outcomes],
            "seconds": round(time.perf_counter() - began, 4),
        }
        rows = [{"device": o.topology.device.name, "rank": rank, "config": e.config, "metrics": metrics_of(e)}
                for o, rank, e in found]
        store.save_run(workflow_id, model_key, body.method, body.model_dump(), summary, rows, body.concurrency)
        best = store.configurations(workflow_id)[: body.top_k]
        return {"object": "simulation", "workflow_id": workflow_id, "method": body.method,
                "workload": dataclasses.asdict(workload), **summary,
                "recommendations": [self._public(item) for item in best]}

    def _public(self, item: dict[str, Any]) -> dict[str, Any]:
        config = item["config"]
        deployment = Deployment(**config)
        return {"config_id": item["id"], "device": item["device"], "rank": item["rank"], "config": config,
                "engine_args": deployment.engine_args(), "devices_used": deployment.devices,
                "metrics": item["metrics"], "blacklisted": item["blacklisted"], "feedback": item["feedback"]}

    async def list_runs(self, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        return {"object": "list", "data": self._ready_store().runs(limit)}

    async def recommendations(self, workflow_id: str = Query(min_length=1, max_length=100),
                              device: str | None = Query(None, max_length=200),
                              concurrency: int | None = Query(None, ge=1),
                              error_rate_threshold: float = Query(0.5, ge=0, le=1),
                              page: int = Query(1, ge=1), limit: int = Query(1, ge=1, le=100)) -> dict[str, Any]:
        store = self._ready_store()
        self._run_or_404(workflow_id, concurrency)
        items = store.configurations(workflow_id, device=device, max_error_rate=error_rate_threshold)
        chunk = items[(page - 1) * limit: page * limit]
        return {"object": "list", "workflow_id": workflow_id, "page": page, "limit": limit, "total": len(items),
                "data": [self._public(item) for item in chunk]}

    def _run_or_404(self, workflow_id: str, concurrency: int | None) -> dict[str, Any]:
        run = self._ready_store().run(workflow_id)
        if run is None:
            raise ServiceError(404, f"no simulation run {workflow_id!r}", "run_not_found", "workflow_id")
        if concurrency is not None and run["request"].get("concurrency") != concurrency:
            raise ServiceError(404, f"run {workflow_id} was simulated for concurrency "
                               f"{run['request'].get('concurrency')}, not {concurrency}", "run_not_found",
                               "concurrency")
        return run

    async def configurations(self, body: ConfigurationsRequest) -> dict[str, Any]:
        """The run's configurations, after applying feedback: a failed one is blacklisted
        (left out here and skipped by later runs of the model), failed: false clears it."""
        store = self._ready_store()
        self._run_or_404(body.workflow_id, body.concurrency)
        known = {item["id"] for item in store.configurations(body.workflow_id, include_blacklisted=True)}
        unknown = [f.config_id for f in body.feedback if f.config_id not in known]
        if unknown:  # nothing is applied when part of the feedback is wrong
            raise ServiceError(404, f"run {body.workflow_id} has no configuration {unknown[0]}",
                               "configuration_not_found", "feedback")
        for item in body.feedback:
            if item.failed:
                store.blacklist(body.workflow_id, item.config_id, item.reason)
            else:
                store.unblacklist(body.workflow_id, item.config_id)
        items = store.configurations(body.workflow_id, device=body.device, max_error_rate=body.error_rate_threshold)
        return {"object": "list", "workflow_id": body.workflow_id, "data": [self._public(i) for i in items]}

    async def node_configurations(self, body: NodeConfigurationsRequest) -> dict[str, Any]:
        """Every tensor x pipeline parallel split on each device: valid or not, and why."""
        self._require_ready()
        spec, _, entry = self._model(body)
        workload = self._workload(body, spec, entry)
        data = []
        for topology in self._topologies(body.devices):
            for tp in powers_of_two(topology.devices):
                for pp in powers_of_two(topology.devices // tp):
                    # vLLM's block size for the device: its CPU backend refuses the GPU's 16.
                    deployment = Deployment(tensor_parallel=tp, pipeline_parallel=pp,
                                            block_size=engine_defaults(topology.device.kind).block_size,
                                            quantization=_quantization(body.quantization))
                    reasons = validate_parallelism(spec, topology, deployment)
                    memory = memory_breakdown(spec, topology, deployment, workload)
                    if not reasons and not memory.fits:
                        reasons = [memory.reason or "does not fit"]
                    data.append({"device": topology.device.name, "tensor_parallel": tp, "pipeline_parallel": pp,
                                 "valid": not reasons, "reasons": reasons,
                                 "memory_gb_per_device": round(memory.total_gb, 3),
                                 "max_concurrency": memory.max_sequences})
        return {"object": "list", "model": spec.name, "data": data}

    async def benchmark_config(self, body: BenchmarkConfigRequest) -> dict[str, Any]:
        """One configuration the user chose: is it possible, what it needs, what it should do."""
        self._require_ready()
        spec, _, entry = self._model(body)
        workload = self._workload(body, spec, entry)
        if body.devices is not None and len(body.devices) > 1:
            raise ServiceError(400, "benchmark-config describes one configuration: give one device", "invalid_request",
                               "devices")
        topology = self._topologies(body.devices)[0]
        block_size = body.block_size if body.block_size is not None else \
            engine_defaults(topology.device.kind).block_size
        deployment = Deployment(
            tensor_parallel=body.tensor_parallel, pipeline_parallel=body.pipeline_parallel, replicas=body.replicas,
            max_num_seqs=body.max_num_seqs, block_size=block_size, chunked_prefill=body.chunked_prefill,
            prefix_caching=body.prefix_caching, quantization=_quantization(body.quantization))
        reasons = validate_parallelism(spec, topology, deployment)
        if reasons:
            raise ServiceError(422, "; ".join(reasons), "invalid_configuration")
        memory = memory_breakdown(spec, topology, deployment, workload)
        prediction = predict(spec, topology, deployment, workload, memory=memory)
        predictor = self._predictor(body.method)
        if predictor is not None:
            prediction = predictor(spec, topology, deployment, workload, prediction)
        return {"object": "benchmark_config", "device": topology.device.name, "fits": memory.fits,
                "reason": memory.reason, "config": deployment.as_dict(), "prediction": prediction.as_dict(),
                "models_yaml": {"engine": "vllm", "args": {k.replace("-", "_"): v
                                                           for k, v in deployment.engine_args().items()}}}

    async def start_benchmark(self, body: BenchmarkRequest) -> dict[str, Any]:
        self._require_ready()
        assert self.jobs is not None
        spec, _, entry = self._model(ModelRef(model=body.model))
        assert entry is not None
        # The records describe vLLM deployments: vLLM's engine, or a command that runs a server of its kind.
        if entry.engine not in ("vllm", "command"):
            raise ServiceError(400, f"model {body.model!r} is served by the {entry.engine} engine; benchmark jobs "
                               "measure vLLM services (engine vllm, or command)", "not_vllm", "model")
        try:  # the records will need these as numbers: say so now, not after the sweep
            deployment_from_args(dict(entry.args), "cpu")
        except (TypeError, ValueError) as exc:
            raise ServiceError(400, f"model {body.model!r}: its vLLM args in models.yaml are not what vLLM takes "
                               f"({exc})", "invalid_engine_args", "model") from None
        points = [SweepPoint(c, length.input_tokens, length.output_tokens)
                  for length in body.lengths for c in body.concurrency]
        target = Target(model_id=body.model, spec=spec, args=dict(entry.args))
        job_id = self.jobs.start(target, points, body.requests_per_point, body.retrain, body.model_dump())
        return {"object": "benchmark_job", "id": job_id, "state": "running", "points": len(points)}

    async def list_benchmarks(self, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        return {"object": "list", "data": self._ready_store().jobs(limit)}

    async def get_benchmark(self, job_id: str) -> dict[str, Any]:
        job = self._ready_store().job(job_id)
        if job is None:
            raise ServiceError(404, f"no benchmark job {job_id!r}", "job_not_found")
        return {"object": "benchmark_job", **job}

    async def cancel_benchmark(self, job_id: str) -> dict[str, Any]:
        job = await self.get_benchmark(job_id)
        assert self.jobs is not None
        if not self.jobs.cancel(job_id):
            raise ServiceError(409, f"benchmark job {job_id} is not running ({job['state']})", "job_not_running")
        return {**job, "state": "cancelling"}

    async def hardware(self) -> dict[str, Any]:
        self._require_ready()
        return {"object": "hardware",
                "host": [{**h.device.as_dict(), "count": h.count, "note": h.note} for h in self.host],
                "catalog": [d.as_dict() for d in self.catalog.values()]}

    async def regressor_status(self) -> dict[str, Any]:
        store = self._ready_store()
        jobs = [job for job in store.jobs(50) if job.get("evaluation")]
        return {"object": "regressor", "trained_on": self.regressor.trained_on if self.regressor else 0,
                "devices": self.regressor.device_names if self.regressor else [],
                "shipped_records": len(shipped_records()), "stored_records": len(store.records()),
                "last_evaluation": jobs[0]["evaluation"] if jobs else None}

    # ------------------------------------------------------------ helpers

    def _predictor(self, method: str) -> Any:
        if method != "regressor":
            return None
        regressor = self.regressor
        if regressor is None:
            raise ServiceError(503, "the regressor is not trained yet; use method: heuristic", "regressor_missing")
        return lambda model, topology, deployment, workload, heuristic: regressor.predict(
            model, topology, deployment, workload, heuristic)

    def _config_entry(self, model_id: str) -> tuple[Any, str]:
        """The models.yaml entry of a text model, and its path as the orchestrator expands it."""
        if not self.options.config:
            raise ServiceError(400, "this simulator was started without models.yaml (--config); give model_path",
                               "no_config", "model")
        try:
            config = load_config(self.options.config)
        except ConfigError as exc:
            raise ServiceError(503, f"models.yaml cannot be read: {exc}", "config_invalid") from None
        entry = config.models.get(model_id)
        if entry is None:
            raise ServiceError(404, f"no model {model_id!r} in models.yaml", "model_not_found", "model")
        if entry.type != "text" or not entry.model:
            raise ServiceError(400, f"model {model_id!r} is not a text model with a local path; the simulator "
                               "describes LLMs", "not_an_llm", "model")
        # ${STATE_DIR} and ${ROOT} as the orchestrator expands them (core/engines.py)
        return entry, expand(entry.model, {"STATE_DIR": str(config.state_path()), "ROOT": str(ROOT_DIR)})

    def _model(self, ref: ModelRef) -> tuple[ModelSpec, str, Any | None]:
        """The spec, the key runs are filed under (the model id or the path) and the
        models.yaml entry (None for a model_path)."""
        entry = None
        if ref.model is not None:
            entry, path = self._config_entry(ref.model)
            key = ref.model
        else:
            path = key = str(ref.model_path)
        try:
            return load_model_spec(path, name=key), key, entry
        except ModelConfigError as exc:
            raise ServiceError(400, str(exc), "model_config_invalid", "model" if ref.model else "model_path") \
                from None

    def _workload(self, body: WorkloadFields, spec: ModelSpec, entry: Any | None) -> Workload:
        """The workload, refused when its sequences do not fit the model's context (or models.yaml's max_model_len)."""
        limits = [(spec.max_positions, "the model's max_position_embeddings")] if spec.max_positions else []
        if entry is not None:
            length = entry.args.get("max_model_len")
            if isinstance(length, int) and not isinstance(length, bool) and length > 0:
                limits.append((length, "its max_model_len in models.yaml"))
        tokens = body.input_tokens + body.output_tokens
        for limit, what in limits:
            if tokens > limit:
                raise ServiceError(400, f"input_tokens + output_tokens = {tokens} exceeds {limit}, {what}",
                                   "context_too_long", "input_tokens")
        return _workload(body)

    def _topologies(self, choices: list[DeviceChoice] | None) -> list[Topology]:
        if choices is None:
            gpus = [h for h in self.host if h.device.kind == "gpu"]
            return [Topology(h.device, devices_per_node=h.count) for h in gpus] + \
                [Topology(h.device) for h in self.host if h.device.kind == "cpu"]
        topologies = []
        host = {h.device.name: h.device for h in self.host}
        for choice in choices:
            device = host.get(choice.name) or self.catalog.get(choice.name)
            if device is None:
                known = ", ".join(dict.fromkeys([*host, *self.catalog]))  # a host GPU is a catalog name too
                raise ServiceError(400, f"unknown device {choice.name!r}; known: {known}", "unknown_device",
                                   "devices")
            topologies.append(Topology(device, devices_per_node=choice.count, nodes=choice.nodes))
        return topologies

    def _device_for(self, gpus: list[int]) -> Device:
        """The device a service placed on these GPU indices runs on (none: the host CPU)."""
        for index in gpus:
            if index in self.gpu_devices:
                return self.gpu_devices[index]
        return next(h.device for h in self.host if h.device.kind == "cpu")


def _workload(body: WorkloadFields) -> Workload:
    return Workload(input_tokens=body.input_tokens, output_tokens=body.output_tokens, concurrency=body.concurrency,
                    target_ttft_ms=body.target_ttft_ms, target_throughput_per_user=body.target_throughput_per_user,
                    target_e2e_latency_s=body.target_e2e_latency_s)


if __name__ == "__main__":
    # A bad catalog or database at start ends load() with "modelyard: load failed: ..." (core.base_service).
    SimulatorService.main()
