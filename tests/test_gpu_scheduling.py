"""Placement across GPUs, end to end: a simulated GPU inventory feeds the real
scheduler, which starts real service processes on the GPUs it chose
(CUDA_VISIBLE_DEVICES, the card share as vLLM's --gpu-memory-utilization),
and sizes models by memory_gb, their measured footprint, or an estimate."""

from __future__ import annotations

import json
import sqlite3

import httpx

from tests.conftest import fake_model, wait_until

TWO_24GB = {"gpus": [{"name": "L4 (simulated)", "memory_gb": 24}] * 2, "gpu_reserve_gb": 0}
VLLM_LIKE = "--gpu-memory-utilization ${GPU_MEMORY_FRACTION}"


def chat(client: httpx.Client, model: str) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def service_health(orch, model_id: str) -> dict:
    return httpx.get(orch.service_url(model_id) + "/health", timeout=5).json()


def test_services_are_packed_best_fit_and_see_only_their_gpus(orchestrator):
    orch = orchestrator(
        {
            "settings": TWO_24GB,
            "models": {
                "a": fake_model(VLLM_LIKE, memory_gb=16),
                "b": fake_model(VLLM_LIKE, memory_gb=6),
                "c": fake_model(VLLM_LIKE, memory_gb=16),
                "cpu": fake_model(memory_gb=2, gpus=0),
            },
        }
    )
    with orch.client() as client:
        for model in ("a", "b", "c", "cpu"):
            assert chat(client, model).status_code == 200
        services = orch.services()
        # b (6 GB) fits in the 8 GB a left on its card: best fit keeps the other card whole for c.
        assert services["a"]["pools"] == services["b"]["pools"] != services["c"]["pools"]
        assert services["cpu"]["pools"] == ["host"]
        for model, share in (("a", 16 / 24), ("b", 6 / 24), ("c", 16 / 24)):
            health = service_health(orch, model)
            assert health["cuda_visible_devices"] == services[model]["pools"][0].removeprefix("gpu")
            assert health["gpu_memory_utilization"] == int(share * 1000) / 1000  # rounded down
        # A service placed on the CPU must not see the GPUs at all.
        assert service_health(orch, "cpu")["cuda_visible_devices"] == ""

        listing = client.get("/admin/gpus").json()
        reserved = {row["index"]: row["reserved"] for row in listing["gpus"]}
        assert sorted(map(sorted, reserved.values())) == [["a", "b"], ["c"]]
        assert all(row["budget_gb"] == 24 for row in listing["gpus"])


def test_tensor_parallel_takes_two_gpus_and_evicts_what_it_must(orchestrator):
    orch = orchestrator(
        {
            "settings": TWO_24GB,
            "models": {
                "small": fake_model(memory_gb=20),
                "tp": fake_model(VLLM_LIKE + " --chunks ${GPU_COUNT}", memory_gb=30, gpus=2),
            },
        }
    )
    with orch.client() as client:
        assert chat(client, "small").status_code == 200
        response = chat(client, "tp")
        assert response.status_code == 200, response.text
    services = orch.services()
    assert services["small"]["state"] == "stopped"
    assert sorted(services["tp"]["pools"]) == ["gpu0", "gpu1"]
    assert services["tp"]["reserved_gb"] == 30
    health = service_health(orch, "tp")
    assert health["cuda_visible_devices"] == "0,1" and health["gpu_memory_utilization"] == 0.625
    assert '"msg": "evicting", "model": "small", "for_model": "tp"' in orch.log()
    metrics = httpx.get(orch.url + "/metrics").text
    for line in (
        'modelyard_service_stops_total{model="small",reason="memory"} 1.0',
        'modelyard_service_loads_total{model="tp",outcome="ready"} 1.0',
        'modelyard_service_load_seconds_count{model="tp"} 1.0',
        'modelyard_service_state{model="tp",state="ready"} 1.0',
        'modelyard_service_state{model="small",state="stopped"} 1.0',
        'modelyard_service_transitions_total{from_state="ready",model="small",to_state="stopping"} 1.0',
        'modelyard_service_reserved_gb{model="tp",pool="gpu1"} 15.0',
        'modelyard_pool_reserved_gb{pool="gpu0"} 15.0',
        'modelyard_pool_budget_gb{pool="gpu0"} 24.0',
        'modelyard_request_wait_seconds_count{model="tp"} 1.0',
    ):
        assert line in metrics, line


def test_more_gpus_than_the_host_has_is_a_507_that_says_so(orchestrator):
    orch = orchestrator({"settings": TWO_24GB, "models": {"wide": fake_model(memory_gb=10, gpus=4)}})
    with orch.client() as client:
        response = chat(client, "wide")
    assert response.status_code == 507
    assert response.json()["error"]["message"] == "model 'wide' needs 4 GPUs; this host has 2"
    assert orch.services()["wide"]["starts"] == 0


def test_a_model_without_memory_gb_is_sized_by_what_it_used_last_time(orchestrator):
    orch = orchestrator({"settings": {"memory_budget_gb": 4}, "models": {"m": fake_model()}})
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
        first = orch.services()["m"]
        assert first["need_source"] == "unknown" and first["reserved_gb"] == 0
        assert wait_until(lambda: orch.services()["m"]["measured_gb"], 10)
        measured = orch.services()["m"]["measured_gb"]
        assert 0.005 < measured < 1  # a small Python process's RSS
        assert client.post("/admin/services/m/unload").status_code == 200
        assert chat(client, "m").status_code == 200
        again = orch.services()["m"]
    assert again["need_source"] == "measured"
    assert abs(again["reserved_gb"] - measured) < 0.002
    # Kept in sqlite, for the next orchestrator on this state directory.
    with sqlite3.connect(orch.state_dir / "orchestrator.db") as db:
        rows = db.execute("select model_id, memory_gb, on_gpu, load_seconds from footprints").fetchall()
    assert [(r[0], r[2]) for r in rows] == [("m", 0)] and rows[0][1] > 0.005 and rows[0][3] > 0


def test_a_model_without_memory_gb_is_estimated_from_its_config_json(orchestrator, tmp_path):
    weights = tmp_path / "tiny-llama"
    weights.mkdir()
    (weights / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
                "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                "torch_dtype": "float16",
            }
        )
    )
    orch = orchestrator(
        {"settings": TWO_24GB, "models": {"llama": fake_model(model=str(weights), args={"max_model_len": 2048})}}
    )
    with orch.client() as client:
        assert chat(client, "llama").status_code == 200
    service = orch.services()["llama"]
    assert service["need_source"] == "estimate"
    # 6.7 B parameters in fp16 (12.6 GiB) + a 2048-token KV cache (1 GiB) + overhead.
    assert 13.5 < service["reserved_gb"] < 16
    assert '"msg": "memory estimated", "model": "llama"' in orch.log()
