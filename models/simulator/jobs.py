"""The benchmark job: the appliance measures itself to teach the regressor.

A job sweeps one model of models.yaml over concurrency and prompt/output
lengths through the orchestrator's own endpoint (so the scheduler loads the
model and keeps it while requests are in flight), stores one record per
point as it goes, then retrains the regressor on the shipped records and
every stored one and reports its leave-one-out error.

The orchestrator gives this service its URL and a per-start credential
(MODELYARD_ORCHESTRATOR_URL, MODELYARD_SIMULATOR_TOKEN) that may run
inference and read the service list, nothing more. One job runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx

from core.errors import ServiceError
from core.logs import log_event
from models.simulator.benchmark import BenchmarkError, PointResult, SweepPoint, run_sweep
from models.simulator.deployment import Workload, deployment_from_args
from models.simulator.hardware import Device
from models.simulator.model_spec import ModelSpec
from models.simulator.records import Record, shipped_records
from models.simulator.regressor import Regressor, RegressorError, leave_one_out
from models.simulator.store import SimulatorStore

log = logging.getLogger("modelyard.simulator.jobs")


@dataclass(frozen=True)
class Target:
    """A models.yaml model the job can measure."""

    model_id: str
    spec: ModelSpec
    args: dict[str, Any]  # models.yaml's engine args: the deployment, once the device is known


class BenchmarkJobs:
    def __init__(self, store: SimulatorStore, *, orchestrator_url: str | None, token: str | None,
                 device_for: Callable[[list[int]], Device],
                 on_trained: Callable[[Regressor], None]) -> None:
        self.store = store
        self.orchestrator_url = orchestrator_url
        self.token = token
        self.device_for = device_for  # the GPUs a service holds (none: the CPU) -> the Device it runs on
        self.on_trained = on_trained
        self.current: tuple[str, asyncio.Task[None]] | None = None
        self._cancelled: set[str] = set()

    def start(self, target: Target, points: list[SweepPoint], requests_per_point: int | None,
              retrain: bool, request: dict[str, Any]) -> str:
        if self.orchestrator_url is None:
            raise ServiceError(503, "benchmark jobs measure models through the orchestrator; this simulator was "
                               "started without MODELYARD_ORCHESTRATOR_URL", code="no_orchestrator")
        if self.current is not None and not self.current[1].done():
            raise ServiceError(409, f"benchmark job {self.current[0]} is still running; one runs at a time "
                               f"(DELETE /simulator/benchmarks/{self.current[0]} cancels it)", code="job_running")
        job_id = "bench-" + uuid.uuid4().hex[:12]
        self.store.create_job(job_id, request)
        task = asyncio.create_task(self._run(job_id, target, points, requests_per_point, retrain),
                                   name=f"benchmark-{job_id}")
        self.current = (job_id, task)
        log_event(log, "benchmark job started", job=job_id, model=target.model_id, points=len(points))
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Stop the job now (its requests in flight are dropped, its stored points stay);
        False when it is not running."""
        if self.current is None or self.current[0] != job_id or self.current[1].done():
            return False
        self._cancelled.add(job_id)
        self.current[1].cancel()
        return True

    async def close(self) -> None:
        if self.current is not None and not self.current[1].done():
            self.current[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.current[1]

    async def _run(self, job_id: str, target: Target, points: list[SweepPoint], requests_per_point: int | None,
                   retrain: bool) -> None:
        try:
            async def record(result: PointResult) -> None:
                # Where the model ran, asked after each point: it may have been evicted and placed anew.
                gpus = await self._gpus_of(target.model_id)
                device = self.device_for(gpus)
                await asyncio.to_thread(self.store.add_record, _record(target, device, len(gpus), result, job_id),
                                        job_id)

            assert self.orchestrator_url is not None
            await run_sweep(self.orchestrator_url, target.model_id, points, requests_per_point=requests_per_point,
                            api_key=self.token, on_point=record)
            evaluation = await asyncio.to_thread(self._retrain) if retrain else None
            self.store.finish_job(job_id, "done", evaluation=evaluation)
            log_event(log, "benchmark job done", job=job_id, records=len(points))
        except (BenchmarkError, RegressorError) as exc:
            self.store.finish_job(job_id, "failed", error=str(exc))
            log_event(log, "benchmark job failed", logging.ERROR, job=job_id, reason=str(exc))
        except asyncio.CancelledError:
            if job_id in self._cancelled:  # DELETE /simulator/benchmarks/{id}: the job's end, not ours
                self.store.finish_job(job_id, "cancelled")
                log_event(log, "benchmark job cancelled", job=job_id)
                return
            self.store.finish_job(job_id, "cancelled", error="the simulator stopped")
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails, the service goes on
            log.exception("benchmark job %s failed", job_id)
            self.store.finish_job(job_id, "failed", error=f"internal error: {type(exc).__name__}")
        finally:
            self._cancelled.discard(job_id)

    async def _gpus_of(self, model_id: str) -> list[int]:
        """The GPUs the orchestrator placed the model on ([] on the CPU)."""
        assert self.orchestrator_url is not None
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            answer = await client.get(f"{self.orchestrator_url}/admin/services/{quote(model_id, safe='')}",
                                      headers=headers)
        if answer.status_code != 200:
            raise BenchmarkError(f"the orchestrator did not describe {model_id}: HTTP {answer.status_code}")
        devices = answer.json().get("cuda_visible_devices") or ""  # "0,1"; "" on the CPU; None without GPUs
        return [int(index) for index in devices.split(",") if index]

    def _retrain(self) -> dict[str, Any]:
        records = shipped_records() + self.store.records()
        regressor = Regressor.train(records)
        self.on_trained(regressor)
        evaluation = leave_one_out(records)
        evaluation.pop("per_record")
        return evaluation


def _record(target: Target, device: Device, gpus: int, result: PointResult, job_id: str) -> Record:
    point = result.point
    deployment = deployment_from_args(target.args, device.kind)
    if gpus > 1:  # the vLLM launcher splits a model over the GPUs it was given (tensor parallel)
        deployment = replace(deployment, tensor_parallel=gpus)
    return Record(
        model=target.spec, device=device, deployment=deployment,
        workload=Workload(point.input_tokens, point.output_tokens, point.concurrency),
        measured={"ttft_ms": result.ttft_ms, "tpot_ms": result.tpot_ms,
                  "throughput_per_user": result.throughput_per_user, "e2e_latency_s": result.e2e_latency_s,
                  "total_throughput": result.total_throughput},
        source=f"job {job_id}",
    )
