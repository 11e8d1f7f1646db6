"""The performance simulator as the orchestrator runs it: models/simulator/server.py
as a real process with its own environment (./scripts/install.sh --engine
simulator; override with MODELYARD_SIMULATOR_PYTHON), on a state directory of
its own, with a models.yaml that declares a simulated inventory of two H100s.
Driven over HTTP: hardware, runs (heuristic and regressor, exhaustive and
genetic searches, targets), paging, feedback and the blacklist, node
configurations, one chosen configuration, bad input, the benchmark job without
an orchestrator, and state surviving a kill -9 and a restart."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from models.simulator.schemas import BenchmarkRequest
from models.simulator.store import SimulatorStore
from tests.conftest import ROOT
from tests.support.api_errors import assert_error
from tests.support.engine_process import Engine, start_engine

FIXTURES = ROOT / "tests" / "fixtures" / "hf_configs"
SMOLLM2 = FIXTURES / "SmolLM2-135M"  # 9 attention heads, 3 KV heads, 30 layers
LLAMA_70B = FIXTURES / "Llama-3.1-70B"  # 64 heads, 8 KV heads, 80 layers; ~131 GB of bf16 weights
SHIPPED_RECORDS = ROOT / "models" / "simulator" / "data" / "measured.jsonl"
CATALOG = ROOT / "configs" / "hardware.yaml"
# NVML's name for an H100 SXM, and a memory the catalog's 80 GB does not have: the
# host's H100s must take the catalog's figures but the inventory's memory.
H100_NVML = "NVIDIA H100 80GB HBM3"
H100_MEMORY_GB = 79.6
WORKLOAD = {"input_tokens": 128, "output_tokens": 32, "concurrency": 4}
GB_FIGURE = re.compile(r"\d+\.\d+ GB")


@dataclass
class Simulator:
    """The running service; the restart test swaps `engine` for a new process on the same state."""

    engine: Engine
    state: Path
    config: Path

    @property
    def url(self) -> str:
        return self.engine.url


def start(state: Path, config: Path, log_name: str) -> Engine:
    with pytest.MonkeyPatch.context() as env:
        # A benchmark job needs the orchestrator: this service must not be given one.
        env.delenv("MODELYARD_ORCHESTRATOR_URL", raising=False)
        env.delenv("MODELYARD_SIMULATOR_TOKEN", raising=False)
        env.setenv("MODELYARD_STATE_DIR", str(state))
        return start_engine("simulator", state / log_name, "--state-dir", str(state), "--config", str(config))


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    root = tmp_path_factory.mktemp("simulator")
    state, empty = root / "state", root / "no-config"
    state.mkdir()
    empty.mkdir()
    command = "true ${PORT}"  # never started: the simulator only reads the entries' config.json
    config = root / "models.yaml"
    config.write_text(yaml.safe_dump({
        "models": {
            "tiny": {"engine": "command", "cmd": command, "model": str(SMOLLM2)},
            "big": {"engine": "command", "cmd": command, "model": str(LLAMA_70B)},
            "emb": {"type": "embedding", "engine": "command", "cmd": command, "model": str(SMOLLM2)},
            "nocfg": {"engine": "command", "cmd": command, "model": str(empty)},
            "hf": {"engine": "transformers", "model": str(SMOLLM2)},
            "oddargs": {"engine": "command", "cmd": command, "model": str(SMOLLM2), "args": {"max_num_seqs": "lots"}},
        },
        "settings": {"gpus": [{"name": H100_NVML, "memory_gb": H100_MEMORY_GB}] * 2},
    }))
    service = Simulator(start(state, config, "simulator.log"), state, config)
    yield service
    service.engine.stop()


def _no_server_errors(response: httpx.Response) -> None:
    response.read()
    assert response.status_code != 500, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


@pytest.fixture
def client(simulator: Simulator) -> Iterator[httpx.Client]:
    # Every response of every test: never a 500, never a traceback.
    with httpx.Client(base_url=simulator.url, timeout=120, event_hooks={"response": [_no_server_errors]}) as http:
        yield http


def run(client: httpx.Client, **body: Any) -> dict[str, Any]:
    for key, value in WORKLOAD.items():
        body.setdefault(key, value)
    if "model_path" not in body:
        body.setdefault("model", "tiny")
    response = client.post("/simulator/run", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stored(client: httpx.Client, workflow_id: str, **params: Any) -> dict[str, Any]:
    """GET /simulator/recommendations: every configuration of the run (one page of 100)."""
    params = {"workflow_id": workflow_id, "limit": 100, **params}
    response = client.get("/simulator/recommendations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def rank_key(item: dict[str, Any]) -> tuple[float, float, float]:
    metrics = item["metrics"]
    return metrics["error_rate"], metrics["cost_per_million_tokens"], -metrics["throughput_per_user"]


def deployment(item: dict[str, Any]) -> tuple[str, str]:
    return item["device"], json.dumps(item["config"], sort_keys=True)


# ---------------------------------------------------------------- health and hardware


def test_health_and_hardware(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["devices"] == ["H100-SXM", "host-cpu"]

    hardware = client.get("/simulator/hardware").json()
    catalog_file = yaml.safe_load(CATALOG.read_text())
    catalog = {d["name"]: d for d in hardware["catalog"]}
    assert list(catalog) == list(catalog_file)  # the whole catalog, in the file's order
    assert catalog["H100-SXM"]["memory_gb"] == 80 and catalog["H100-SXM"]["source"] == "catalog"

    gpu, cpu = hardware["host"]
    # The simulated H100s: the catalog's H100-SXM figures, the inventory's count and memory.
    assert gpu["name"] == "H100-SXM" and gpu["count"] == 2 and gpu["source"] == "simulated"
    assert gpu["memory_gb"] == H100_MEMORY_GB
    for field in ("kind", "vendor", "bandwidth_gbps", "fp16_tflops", "int8_tops", "int4_tops", "interconnect_gbps",
                  "cost_per_hour"):
        assert gpu[field] == catalog["H100-SXM"][field], field
    assert H100_NVML in gpu["note"]
    # The host CPU: measured here, so positive figures of its own and no price.
    assert cpu["name"] == "host-cpu" and cpu["kind"] == "cpu" and cpu["source"] == "measured"
    assert cpu["count"] == 1 and cpu["cost_per_hour"] == 0
    assert cpu["memory_gb"] > 0 and cpu["bandwidth_gbps"] > 0 and cpu["fp16_tflops"] > 0


def test_regressor_status(client: httpx.Client) -> None:
    status = client.get("/simulator/regressor").json()
    shipped = sum(1 for line in SHIPPED_RECORDS.read_text().splitlines() if line.strip())
    assert status["shipped_records"] == shipped >= 3
    assert status["trained_on"] >= shipped
    assert "host-cpu" in status["devices"] and "H100-SXM" not in status["devices"]
    assert status["stored_records"] == 0 and status["last_evaluation"] is None


# ---------------------------------------------------------------- runs


def test_run_on_the_host_devices(client: httpx.Client) -> None:
    result = run(client)
    assert result["object"] == "simulation" and re.fullmatch(r"[0-9a-f]{32}", result["workflow_id"])
    assert result["method"] == "regressor"  # the default
    assert result["workload"]["input_tokens"] == 128 and result["workload"]["concurrency"] == 4
    assert result["model"]["heads"] == 9 and result["model"]["layers"] == 30

    searched = {d["device"]: d for d in result["devices"]}
    assert list(searched) == ["H100-SXM", "host-cpu"]  # the host's, GPUs first
    assert searched["H100-SXM"]["count"] == 2
    for summary in searched.values():
        # Small spaces are searched exhaustively: every configuration evaluated.
        assert summary["search"] == "exhaustive" and summary["generations"] == 0
        assert summary["evaluations"] == summary["space_size"] > 0
    # host-cpu: one device, so tp = pp = replicas = 1; 6 batch sizes x 3 block sizes x 2 x 2.
    assert searched["host-cpu"]["space_size"] == 72 and searched["host-cpu"]["invalid"] == 0
    # Two H100s: replicas x pipeline stages beyond 2 devices are rejected, with the reason.
    assert searched["H100-SXM"]["invalid"] > 0
    assert any("need 4 devices; 2 are available" in reason
               for reason in searched["H100-SXM"]["rejected_sample"].values())

    recommendations = result["recommendations"]
    assert len(recommendations) == 5  # top_k
    keys = [rank_key(item) for item in recommendations]
    assert keys == sorted(keys)
    for item in recommendations:
        config, metrics = item["config"], item["metrics"]
        assert isinstance(item["config_id"], int) and item["device"] in searched and item["rank"] >= 1
        assert item["blacklisted"] is False and item["feedback"] is None
        assert item["engine_args"]["tensor-parallel-size"] == config["tensor_parallel"]
        assert item["engine_args"]["pipeline-parallel-size"] == config["pipeline_parallel"]
        assert item["engine_args"]["max-num-seqs"] == config["max_num_seqs"]
        assert item["engine_args"]["block-size"] == config["block_size"]
        assert item["devices_used"] == config["tensor_parallel"] * config["pipeline_parallel"] * config["replicas"]
        for name in ("ttft_ms", "tpot_ms", "throughput_per_user", "total_throughput", "e2e_latency_s",
                     "memory_gb_per_device"):
            assert metrics[name] > 0, name
        assert metrics["error_rate"] == 0  # no targets
        assert metrics["memory"]["fits"] is True and metrics["memory"]["total_gb"] < metrics["memory"]["usable_gb"]
        assert metrics["max_concurrency"] >= 1

    # The run keeps every device's best: 5 each, ranked 1..5 per device, in the same order as the answer.
    everything = stored(client, result["workflow_id"])
    assert everything["total"] == 10
    assert sorted((d["device"], d["rank"]) for d in everything["data"]) == sorted(
        (device, rank) for device in searched for rank in range(1, 6))
    assert [rank_key(item) for item in everything["data"]] == sorted(rank_key(item) for item in everything["data"])
    assert [d["config_id"] for d in everything["data"][:5]] == [d["config_id"] for d in recommendations]
    assert result["workflow_id"] in [r["workflow_id"] for r in client.get("/simulator/runs").json()["data"]]


def test_equal_cost_ranks_by_throughput_per_user(client: httpx.Client) -> None:
    # host-cpu has no price: 50 of its 72 configurations, all at cost 0, ordered by per-user throughput.
    result = run(client, devices=[{"name": "host-cpu"}], top_k=50, concurrency=64, method="heuristic")
    ranked = stored(client, result["workflow_id"])["data"]
    assert len(ranked) == 50 and {item["metrics"]["cost_per_million_tokens"] for item in ranked} == {0}
    throughput = [item["metrics"]["throughput_per_user"] for item in ranked]
    assert throughput == sorted(throughput, reverse=True) and throughput[0] > throughput[-1]
    assert [item["rank"] for item in ranked] == list(range(1, 51))
    assert [item["config_id"] for item in result["recommendations"]] == [item["config_id"] for item in ranked]


def test_the_regressor_corrects_only_the_devices_it_was_trained_on(client: httpx.Client) -> None:
    heuristic = stored(client, run(client, method="heuristic")["workflow_id"])["data"]
    regressor = stored(client, run(client, method="regressor")["workflow_id"])["data"]
    assert {d["metrics"]["method"] for d in heuristic} == {"heuristic"}

    def by_device(items: list[dict[str, Any]], device: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(d["config"], d["metrics"]) for d in items if d["device"] == device]

    # On the H100s (no measured record) the regressor's answer is the heuristic's, number for number.
    h100 = by_device(regressor, "H100-SXM")
    assert len(h100) == 5 and h100 == by_device(heuristic, "H100-SXM")
    assert {metrics["method"] for _, metrics in h100} == {"heuristic"}
    # On host-cpu (the shipped records' device) it corrects them.
    cpu_h = {json.dumps(config, sort_keys=True): metrics for config, metrics in by_device(heuristic, "host-cpu")}
    cpu_r = {json.dumps(config, sort_keys=True): metrics for config, metrics in by_device(regressor, "host-cpu")}
    assert {metrics["method"] for metrics in cpu_r.values()} == {"regressor"} and len(cpu_r) == 5
    for config in cpu_h.keys() & cpu_r.keys():
        assert cpu_r[config]["ttft_ms"] != cpu_h[config]["ttft_ms"], config
        assert cpu_r[config]["memory"] == cpu_h[config]["memory"]  # memory is the heuristic's own

    # The same through one chosen configuration, identical for both methods.
    for device, differs in (("host-cpu", True), ("H100-SXM", False)):
        predictions = {}
        for method in ("heuristic", "regressor"):
            answer = client.post("/simulator/benchmark-config", json={
                "model": "tiny", **WORKLOAD, "devices": [{"name": device}], "method": method, "block_size": 32})
            assert answer.status_code == 200, answer.text
            predictions[method] = answer.json()["prediction"]
        assert predictions["heuristic"]["method"] == "heuristic"
        assert predictions["regressor"]["method"] == ("regressor" if differs else "heuristic")
        same = all(predictions["heuristic"][k] == predictions["regressor"][k]
                   for k in ("ttft_ms", "tpot_ms", "throughput_per_user", "e2e_latency_s", "total_throughput"))
        assert same is not differs, (device, predictions)


def test_targets_set_the_error_rate(client: httpx.Client) -> None:
    impossible = run(client, target_ttft_ms=0.001, target_throughput_per_user=10**9, method="heuristic")
    assert impossible["recommendations"]
    assert all(item["metrics"]["error_rate"] == 1.0 for item in impossible["recommendations"])
    # Recommendations leave out those missing more than half of the targets unless asked for them.
    assert stored(client, impossible["workflow_id"])["total"] == 0
    assert stored(client, impossible["workflow_id"], error_rate_threshold=1)["total"] == 10

    half = run(client, target_ttft_ms=0.001, target_e2e_latency_s=10**6, method="heuristic")
    assert {item["metrics"]["error_rate"] for item in half["recommendations"]} == {0.5}

    # A target the GPUs meet and the CPU does not: fewer targets missed outranks a lower price.
    mixed = run(client, input_tokens=2048, target_ttft_ms=100, method="heuristic")
    ranked = stored(client, mixed["workflow_id"], error_rate_threshold=1)["data"]
    assert [rank_key(item) for item in ranked] == sorted(rank_key(item) for item in ranked)
    errors = {item["device"]: item["metrics"]["error_rate"] for item in ranked}
    assert errors == {"H100-SXM": 0.0, "host-cpu": 1.0}, errors
    assert all(item["metrics"]["ttft_ms"] > 100 for item in ranked if item["device"] == "host-cpu")
    assert [item["device"] for item in mixed["recommendations"]] == ["H100-SXM"] * 5  # though host-cpu costs 0
    assert stored(client, mixed["workflow_id"])["total"] == 5  # the default threshold leaves the CPU out

    easy = run(client, target_ttft_ms=10**7, target_throughput_per_user=0.001, target_e2e_latency_s=10**6,
               method="heuristic")
    assert all(item["metrics"]["error_rate"] == 0 for item in easy["recommendations"])
    assert stored(client, easy["workflow_id"])["total"] == 10


def test_catalog_devices_and_the_genetic_search(client: httpx.Client) -> None:
    body = {"model_path": str(LLAMA_70B), "input_tokens": 512, "output_tokens": 128, "concurrency": 16,
            "devices": [{"name": "H100-SXM", "count": 8}], "seed": 7, "method": "heuristic"}
    first = run(client, **body)
    (summary,) = first["devices"]
    assert summary["device"] == "H100-SXM" and summary["count"] == 8
    assert summary["space_size"] > 2000 and summary["search"] == "genetic"
    assert 0 < summary["evaluations"] < summary["space_size"] and summary["generations"] >= 1
    assert first["model"]["name"] == str(LLAMA_70B) and first["model"]["heads"] == 64
    for item in stored(client, first["workflow_id"])["data"]:
        config, memory = item["config"], item["metrics"]["memory"]
        used = config["tensor_parallel"] * config["pipeline_parallel"] * config["replicas"]
        assert used <= 8 and item["devices_used"] == used
        # 131 GB of weights: never on one device.
        assert config["tensor_parallel"] * config["pipeline_parallel"] >= 2
        assert memory["fits"] is True and memory["total_gb"] < memory["usable_gb"] <= 80

    # The same seed: the same search, the same answer.
    again = run(client, **body)
    assert again["workflow_id"] != first["workflow_id"]
    assert again["devices"][0]["evaluations"] == summary["evaluations"]
    assert again["devices"][0]["generations"] == summary["generations"]
    assert [(d["config"], d["metrics"]) for d in again["recommendations"]] == \
        [(d["config"], d["metrics"]) for d in first["recommendations"]]

    # One T4 (16 GB) holds no part of it.
    t4 = client.post("/simulator/run", json={**body, "devices": [{"name": "T4"}]})
    error = assert_error(t4, 422, None, "no_feasible_configuration")
    assert "T4" in error["message"] and GB_FIGURE.search(error["message"]), error


# ---------------------------------------------------------------- recommendations and feedback


def test_recommendations_page_through_a_run(client: httpx.Client) -> None:
    result = run(client, method="heuristic")
    workflow = result["workflow_id"]
    everything = stored(client, workflow)["data"]
    assert len(everything) == 10

    pages = []
    for page in (1, 2, 3, 4, 5, 6):
        answer = client.get("/simulator/recommendations", params={"workflow_id": workflow, "limit": 2, "page": page})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] == 10 and body["page"] == page and body["limit"] == 2
        pages.append([d["config_id"] for d in body["data"]])
    assert pages[:5] == [[d["config_id"] for d in everything[i:i + 2]] for i in range(0, 10, 2)]
    assert pages[5] == []  # past the end
    default = client.get("/simulator/recommendations", params={"workflow_id": workflow}).json()
    assert [d["config_id"] for d in default["data"]] == [everything[0]["config_id"]]  # limit 1 by default

    h100 = stored(client, workflow, device="H100-SXM")
    assert h100["total"] == 5 and {d["device"] for d in h100["data"]} == {"H100-SXM"}
    assert stored(client, workflow, concurrency=WORKLOAD["concurrency"])["total"] == 10

    assert_error(client.get("/simulator/recommendations", params={"workflow_id": "nope"}), 404, "workflow_id",
                 "run_not_found")
    assert_error(client.get("/simulator/recommendations", params={"workflow_id": workflow, "concurrency": 8}),
                 404, "concurrency", "run_not_found")
    # Query parameters: core/http_errors.py names them with pydantic's "query." prefix.
    for params, name in (({}, "workflow_id"), ({"workflow_id": workflow, "page": 0}, "page"),
                         ({"workflow_id": workflow, "limit": 101}, "limit"),
                         ({"workflow_id": workflow, "error_rate_threshold": 2}, "error_rate_threshold")):
        answer = client.get("/simulator/recommendations", params=params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] in (name, f"query.{name}"), answer.text


def feedback(client: httpx.Client, workflow: str, *items: dict[str, Any], status: int = 200) -> httpx.Response:
    response = client.post("/simulator/configurations", json={"workflow_id": workflow, "feedback": list(items)})
    assert response.status_code == status, response.text
    return response


def test_feedback_blacklists_a_configuration_for_later_runs(client: httpx.Client) -> None:
    first = run(client, model="tiny", method="heuristic")
    workflow = first["workflow_id"]
    best, second = first["recommendations"][0], first["recommendations"][1]
    assert best["device"] == second["device"] == "host-cpu"  # no price: the cheapest
    cpu_before = next(d for d in first["devices"] if d["device"] == "host-cpu")

    listed = feedback(client, workflow, {"config_id": best["config_id"], "failed": True, "reason": "OOM"}).json()
    assert listed["workflow_id"] == workflow
    assert best["config_id"] not in [d["config_id"] for d in listed["data"]]
    assert len(listed["data"]) == 9 and listed["data"][0]["config_id"] == second["config_id"]
    assert best["config_id"] not in [d["config_id"] for d in stored(client, workflow)["data"]]

    # A new run of the model on the same devices skips the failed deployment (and says so).
    later = run(client, model="tiny", method="heuristic")
    assert deployment(best) not in {deployment(d) for d in stored(client, later["workflow_id"])["data"]}
    assert later["recommendations"][0]["config"] == second["config"]
    cpu_after = next(d for d in later["devices"] if d["device"] == "host-cpu")
    assert cpu_after["invalid"] == cpu_before["invalid"] + 1
    assert "failed before (feedback)" in cpu_after["rejected_sample"].values()

    # failed: false restores it, here and for the next run.
    restored = feedback(client, workflow, {"config_id": best["config_id"], "failed": False}).json()
    assert restored["data"][0]["config_id"] == best["config_id"] and restored["data"][0]["blacklisted"] is False
    assert restored["data"][0]["feedback"] is None
    assert run(client, model="tiny", method="heuristic")["recommendations"][0]["config"] == best["config"]


def test_feedback_with_an_unknown_configuration_applies_nothing(client: httpx.Client) -> None:
    workflow = run(client, method="heuristic")["workflow_id"]
    other = run(client, method="heuristic")
    before = stored(client, workflow)["data"]
    known = before[0]["config_id"]
    for unknown in (10**9, other["recommendations"][0]["config_id"]):  # no such id; another run's
        response = feedback(client, workflow, {"config_id": known, "failed": True, "reason": "crash"},
                            {"config_id": unknown, "failed": True}, status=404)
        assert_error(response, 404, "feedback", "configuration_not_found")
        assert str(unknown) in response.json()["error"]["message"]
    assert stored(client, workflow)["data"] == before  # the valid item was not applied either
    assert_error(client.post("/simulator/configurations", json={"workflow_id": "nope", "feedback": []}), 404,
                 "workflow_id", "run_not_found")
    assert_error(client.post("/simulator/configurations", json={"workflow_id": workflow, "concurrency": 9}), 404,
                 "concurrency", "run_not_found")
    assert_error(client.post("/simulator/configurations", json={
        "workflow_id": workflow, "feedback": [{"config_id": known}]}), 400, "feedback.0.failed", "invalid_request")


# ---------------------------------------------------------------- node configurations, one configuration


def test_node_configurations(client: httpx.Client) -> None:
    answer = client.post("/simulator/node-configurations", json={"model": "tiny", **WORKLOAD})
    assert answer.status_code == 200, answer.text
    splits = {(d["device"], d["tensor_parallel"], d["pipeline_parallel"]): d for d in answer.json()["data"]}
    assert set(splits) == {("H100-SXM", 1, 1), ("H100-SXM", 1, 2), ("H100-SXM", 2, 1), ("host-cpu", 1, 1)}
    tp2 = splits[("H100-SXM", 2, 1)]
    assert tp2["valid"] is False and any("9 attention heads" in r for r in tp2["reasons"]), tp2
    for key in (("H100-SXM", 1, 1), ("H100-SXM", 1, 2), ("host-cpu", 1, 1)):
        assert splits[key]["valid"] is True and splits[key]["reasons"] == [], splits[key]
        assert splits[key]["memory_gb_per_device"] > 0 and splits[key]["max_concurrency"] > 0
    # Pipeline stages split the weights: less memory per device.
    assert splits[("H100-SXM", 1, 2)]["memory_gb_per_device"] < splits[("H100-SXM", 1, 1)]["memory_gb_per_device"]

    one = client.post("/simulator/node-configurations",
                      json={"model": "big", **WORKLOAD, "devices": [{"name": "H100-SXM", "count": 1}]})
    assert one.status_code == 200, one.text
    (only,) = one.json()["data"]
    assert only["valid"] is False and only["max_concurrency"] == 0 and only["memory_gb_per_device"] > 100
    assert len(only["reasons"]) == 1 and GB_FIGURE.search(only["reasons"][0]) and "weights" in only["reasons"][0]

    eight = client.post("/simulator/node-configurations",
                        json={"model": "big", **WORKLOAD, "devices": [{"name": "H100-SXM", "count": 8}]}).json()
    valid = {(d["tensor_parallel"], d["pipeline_parallel"]) for d in eight["data"] if d["valid"]}
    assert (8, 1) in valid and (2, 1) in valid and (1, 1) not in valid
    assert all(d["tensor_parallel"] * d["pipeline_parallel"] <= 8 for d in eight["data"])


def test_benchmark_config(client: httpx.Client) -> None:
    body = {"model": "tiny", **WORKLOAD, "devices": [{"name": "H100-SXM", "count": 2}], "pipeline_parallel": 2,
            "max_num_seqs": 64, "quantization": "fp8"}
    answer = client.post("/simulator/benchmark-config", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["object"] == "benchmark_config" and result["device"] == "H100-SXM"
    assert result["fits"] is True and result["reason"] is None
    assert result["config"]["pipeline_parallel"] == 2 and result["config"]["quantization"] == "fp8"
    prediction = result["prediction"]
    for name in ("ttft_ms", "tpot_ms", "throughput_per_user", "total_throughput", "e2e_latency_s"):
        assert prediction[name] > 0, name
    assert prediction["memory"]["fits"] is True
    assert result["models_yaml"] == {"engine": "vllm", "args": {
        "tensor_parallel_size": 1, "pipeline_parallel_size": 2, "max_num_seqs": 64, "block_size": 16,
        "enable_chunked_prefill": True, "enable_prefix_caching": False, "quantization": "fp8"}}

    # The host CPU with nothing chosen: vLLM's CPU defaults, a valid configuration.
    cpu = client.post("/simulator/benchmark-config", json={"model": "tiny", **WORKLOAD,
                                                           "devices": [{"name": "host-cpu"}]})
    assert cpu.status_code == 200, cpu.text
    assert cpu.json()["config"]["block_size"] % 32 == 0 and cpu.json()["fits"] is True

    impossible = client.post("/simulator/benchmark-config", json={**body, "tensor_parallel": 2, "pipeline_parallel": 1})
    error = assert_error(impossible, 422, None, "invalid_configuration")
    assert "9 attention heads" in error["message"]
    too_many = client.post("/simulator/benchmark-config", json={**body, "replicas": 2})
    assert "need 4 devices; 2 are available" in assert_error(too_many, 422, None, "invalid_configuration")["message"]

    # Possible but too big: an answer that says so, with the figures.
    big = client.post("/simulator/benchmark-config",
                      json={"model": "big", **WORKLOAD, "devices": [{"name": "T4"}], "method": "heuristic"})
    assert big.status_code == 200, big.text
    assert big.json()["fits"] is False and GB_FIGURE.search(big.json()["reason"])


# ---------------------------------------------------------------- bad input


ROUTES = ("/simulator/run", "/simulator/node-configurations", "/simulator/benchmark-config")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("body", "status", "param", "code", "words"),
    [
        ({"model": "tiny", "input_tokens": 0}, 400, "input_tokens", "invalid_request", None),
        ({"model": "tiny", "output_tokens": "many"}, 400, "output_tokens", "invalid_request", None),
        ({"model": "tiny", "concurrency": 0}, 400, "concurrency", "invalid_request", None),
        ({"model": "tiny", "target_ttft_ms": 0}, 400, "target_ttft_ms", "invalid_request", None),
        ({"model": "tiny", "model_path": str(SMOLLM2)}, 400, "model_path", "invalid_request", "model_path"),
        ({"model": None}, 400, "model_path", "invalid_request", "model_path"),
        ({"model": "tiny", "colour": "red"}, 400, "colour", "invalid_request", None),
        ({"model": "tiny", "devices": []}, 400, "devices", "invalid_request", None),
        ({"model": "tiny", "devices": [{"name": "H100-SXM", "count": 0}]}, 400, "devices.0.count", "invalid_request",
         None),
        ({"model": "tiny", "devices": [{"name": "H100-SXM", "gpus": 2}]}, 400, "devices.0.gpus", "invalid_request",
         None),
        ({"model": "tiny", "devices": [{"name": "H100"}]}, 400, "devices", "unknown_device", "H100-SXM, host-cpu"),
        ({"model": "nope"}, 404, "model", "model_not_found", "nope"),
        ({"model": "emb"}, 400, "model", "not_an_llm", "emb"),
        ({"model": "nocfg"}, 400, "model", "model_config_invalid", "config.json"),
        ({"model_path": "/nonexistent/model"}, 400, "model_path", "model_config_invalid", "config.json"),
    ],
)
def test_bad_input(client: httpx.Client, route: str, body: dict[str, Any], status: int, param: str, code: str,
                   words: str | None) -> None:
    body = {key: value for key, value in {**WORKLOAD, **body}.items() if value is not None}
    error = assert_error(client.post(route, json=body), status, param, code)
    if words is not None:
        assert words in error["message"], error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"quantizations": ["int3"]}, "quantizations.0"),
        ({"quantizations": []}, "quantizations"),
        ({"max_num_seqs": [0]}, "max_num_seqs.0"),
        ({"max_num_seqs": [8, 5000]}, "max_num_seqs.1"),
        ({"method": "oracle"}, "method"),
        ({"search": "random"}, "search"),
        ({"top_k": 0}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"population": 1}, "population"),
        ({"max_replicas": 0}, "max_replicas"),
    ],
)
def test_bad_run_options(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(client.post("/simulator/run", json={"model": "tiny", **WORKLOAD, **body}), 400, param,
                 "invalid_request")


def test_an_unknown_device_lists_the_known_ones(client: httpx.Client) -> None:
    error = assert_error(client.post("/simulator/run", json={"model": "tiny", **WORKLOAD, "devices": [
        {"name": "host-cpu"}, {"name": "h100-sxm"}]}), 400, "devices", "unknown_device")  # names are exact
    assert "'h100-sxm'" in error["message"]
    known = error["message"].split("known: ", 1)[1].split(", ")
    # This host's devices first, then the catalog's, each once (the host's H100s are the catalog's H100-SXM).
    assert known == list(dict.fromkeys(["H100-SXM", "host-cpu", *yaml.safe_load(CATALOG.read_text())]))


def test_bad_bodies(client: httpx.Client) -> None:
    not_json = client.post("/simulator/run", content=b"{", headers={"content-type": "application/json"})
    assert_error(not_json, 400, None, "invalid_request")
    assert_error(client.post("/simulator/run", json=[1, 2]), 400, None, "invalid_request")
    assert_error(client.post("/simulator/node-configurations", json={"model": "tiny", **WORKLOAD,
                                                                     "quantization": "int3"}), 400, "quantization")
    # An exhaustive search has no generations to run.
    answer = client.post("/simulator/run", json={"model": "tiny", **WORKLOAD, "search": "exhaustive",
                                                 "devices": [{"name": "host-cpu"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["devices"][0]["search"] == "exhaustive"


# ---------------------------------------------------------------- benchmark jobs


def test_benchmark_jobs_need_the_orchestrator(client: httpx.Client) -> None:
    assert_error(client.post("/simulator/benchmarks", json={"model": "tiny"}), 503, None, "no_orchestrator")
    assert client.get("/simulator/benchmarks").json() == {"object": "list", "data": []}  # nothing was started
    assert_error(client.get("/simulator/benchmarks/nope"), 404, None, "job_not_found")
    assert_error(client.delete("/simulator/benchmarks/nope"), 404, None, "job_not_found")
    assert_error(client.post("/simulator/benchmarks", json={"model": "nope"}), 404, "model", "model_not_found")
    assert_error(client.post("/simulator/benchmarks", json={"model": "emb"}), 400, "model", "not_an_llm")
    # Records describe vLLM deployments; args that vLLM would not take are refused before any request.
    assert_error(client.post("/simulator/benchmarks", json={"model": "hf"}), 400, "model", "not_vllm")
    odd = assert_error(client.post("/simulator/benchmarks", json={"model": "oddargs"}), 400, "model",
                       "invalid_engine_args")
    assert "lots" in odd["message"]
    assert_error(client.post("/simulator/benchmarks", json={"model": "tiny", "concurrency": [0]}), 400,
                 "concurrency.0", "invalid_request")
    # A job measures a served model: models.yaml ids only.
    assert_error(client.post("/simulator/benchmarks", json={"model_path": str(SMOLLM2)}), 400, "model")
    assert_error(client.post("/simulator/benchmarks", json={"model": "tiny", "model_path": str(SMOLLM2)}), 400,
                 "model_path")


def test_a_job_says_how_many_points_it_measures(tmp_path: Path) -> None:
    """In process: `points` next to `records` is the job's progress (modelyard measure draws it)."""
    store = SimulatorStore(tmp_path / "simulator.db")
    try:
        store.create_job("bench-1", BenchmarkRequest(model="tiny", concurrency=[1, 4]).model_dump())
        store.create_job("bench-2", {"model": "tiny"})  # a request of another shape
        assert (store.job("bench-1")["points"], store.job("bench-1")["records"]) == (2, 0)
        assert store.job("bench-2")["points"] is None
    finally:
        store.close()


def test_requests_that_would_tie_up_the_service_are_refused(client: httpx.Client) -> None:
    """Sizes that would make the search endless, or sequences no model could hold."""
    too_many = run_body(devices=[{"name": "H100-SXM", "count": 1024, "nodes": 8}])
    assert_error(client.post("/simulator/run", json=too_many), 400, "devices.0", "invalid_request")
    giant = run_body(model_path=str(LLAMA_70B), model=None, search="exhaustive", concurrency=1024,
                     devices=[{"name": "H100-SXM", "count": 1024}], quantizations=["none", "fp8", "int8", "int4"],
                     max_num_seqs=list(range(1, 17)))
    error = assert_error(client.post("/simulator/run", json=giant), 400, None, "invalid_request")
    assert "exhaustive search of" in error["message"] and "search: genetic" in error["message"]
    # A cluster's worth of devices is searched (the replicas gene stays short) rather than refused.
    big = client.post("/simulator/run", json=run_body(model_path=str(LLAMA_70B), model=None, concurrency=64,
                                                      devices=[{"name": "H100-SXM", "count": 512}], seed=3))
    assert big.status_code == 200, big.text
    assert all(r["config"]["replicas"] <= 64 for r in big.json()["recommendations"])
    # SmolLM2 holds 8192 positions, and models.yaml gives tiny no max_model_len.
    long = client.post("/simulator/run", json=run_body(input_tokens=8000, output_tokens=500))
    error = assert_error(long, 400, "input_tokens", "context_too_long")
    assert "8500 exceeds 8192" in error["message"]
    one = client.post("/simulator/benchmark-config", json={**WORKLOAD, "model": "tiny",
                                                           "devices": [{"name": "L4"}, {"name": "T4"}]})
    assert_error(one, 400, "devices", "invalid_request")


def run_body(**fields: Any) -> dict[str, Any]:
    body = {"model": "tiny", **WORKLOAD, **fields}
    return {key: value for key, value in body.items() if value is not None}


# ---------------------------------------------------------------- restart


def test_state_survives_a_restart(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url, timeout=120, event_hooks={"response": [_no_server_errors]}) as client:
        result = run(client, method="heuristic", devices=[{"name": "host-cpu"}])
        workflow = result["workflow_id"]
        failed = result["recommendations"][0]
        feedback(client, workflow, {"config_id": failed["config_id"], "failed": True, "reason": "OOM"})
        before = stored(client, workflow)
        page = client.get("/simulator/recommendations", params={"workflow_id": workflow, "limit": 2, "page": 2}).json()
        hardware = client.get("/simulator/hardware").json()
        regressor = client.get("/simulator/regressor").json()
        runs = client.get("/simulator/runs", params={"limit": 1000}).json()["data"]

    simulator.engine.stop()  # kill -9: nothing is flushed on the way out
    simulator.engine = start(simulator.state, simulator.config, "simulator-restarted.log")

    with httpx.Client(base_url=simulator.url, timeout=120, event_hooks={"response": [_no_server_errors]}) as client:
        assert stored(client, workflow) == before
        assert failed["config_id"] not in [d["config_id"] for d in before["data"]]
        assert client.get("/simulator/recommendations",
                          params={"workflow_id": workflow, "limit": 2, "page": 2}).json() == page
        assert client.get("/simulator/runs", params={"limit": 1000}).json()["data"] == runs
        # The measured CPU and the trained regressor are read back, not made anew.
        assert client.get("/simulator/hardware").json() == hardware
        assert client.get("/simulator/regressor").json() == regressor
        # The blacklist still holds for new runs of the model.
        later = run(client, method="heuristic", devices=[{"name": "host-cpu"}])
        assert deployment(failed) not in {deployment(d) for d in stored(client, later["workflow_id"])["data"]}
        # And feedback on the old run still works: clearing it brings the deployment back.
        restored = feedback(client, workflow, {"config_id": failed["config_id"], "failed": False}).json()
        assert restored["data"][0]["config_id"] == failed["config_id"]
    assert "Traceback" not in simulator.engine.log()
