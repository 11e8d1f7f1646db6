"""Multi-tenant LoRA through the real orchestrator and vllm launcher, against a
stand-in for vLLM (tests/support/fake_vllm) that loads adapters the way vLLM's
runtime LoRA API does: adapters declared in models.yaml or registered through
the admin API are model names of their own, routed to their base's service and
loaded into it on first use, without a restart. Real vLLM with a real adapter:
tests/engines/test_vllm_lora.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from orchestrator.scheduler import State
from tests.support.inprocess import Harness, serve_in_process

ONE_GPU = {"gpus": [{"name": "sim", "memory_gb": 24}], "gpu_reserve_gb": 0}


def adapter_dir(root: Path, name: str, rank: int = 8, refused: bool = False) -> Path:
    path = root / "adapters" / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "target_modules": ["q"]}))
    if refused:
        (path / "BAD").write_text("the stand-in vLLM refuses this one")
    return path


def base_model(weights: Path, adapters: dict[str, Path] | None = None, **fields: Any) -> dict[str, Any]:
    lora = {"max_rank": 8, "max_loras": 2, "adapters": {k: str(v) for k, v in (adapters or {}).items()}}
    return {"engine": "vllm", "model": str(weights), "memory_gb": 4, "startup_timeout": 30, "lora": lora, **fields}


async def answer(harness: Harness, model: str) -> tuple[int, Any]:
    status, body = await harness.chat(model)
    return status, body["choices"][0]["message"]["content"] if status == 200 else body


async def fake_state(harness: Harness, model_id: str) -> dict[str, Any]:
    async with harness.session.get(harness.scheduler.services[model_id].url + "/health") as response:
        return await response.json()


async def post(harness: Harness, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with harness.session.post(harness.url + path, json=body) as response:
        return response.status, await response.json()


async def delete(harness: Harness, path: str) -> tuple[int, Any]:
    async with harness.session.delete(harness.url + path) as response:
        return response.status, await response.json()


async def test_a_declared_adapter_is_a_model_of_its_own_loaded_once_into_the_running_base(tmp_path, fake_cuda_vllm):
    pirate = adapter_dir(tmp_path, "pirate")
    config = {"settings": ONE_GPU, "models": {"base": base_model(fake_cuda_vllm, {"base-pirate": pirate})}}
    async with serve_in_process(config, tmp_path / "state") as harness:
        assert await answer(harness, "base") == (200, "answered as base")
        pid = harness.scheduler.services["base"].process.pid
        assert await answer(harness, "base-pirate") == (200, "answered as base-pirate")
        assert await answer(harness, "base-pirate") == (200, "answered as base-pirate")
        started = await fake_state(harness, "base")
        assert started["lora_loads"] == ["base-pirate"]  # loaded once, into the same process
        assert harness.scheduler.services["base"].process.pid == pid
        argv = started["argv"]
        assert "--enable-lora" in argv
        assert argv[argv.index("--max-lora-rank") + 1] == "8" and argv[argv.index("--max-loras") + 1] == "2"
        assert started["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"

        async with harness.session.get(harness.url + "/v1/models") as response:
            listed = {m["id"]: m for m in (await response.json())["data"]}
        assert listed["base-pirate"]["parent"] == "base" and listed["base-pirate"]["state"] == "ready"

        # The base restarts: its new process loads the adapter again on first use.
        await harness.admin("POST", "/services/base/unload")
        assert harness.scheduler.services["base"].state is State.STOPPED
        assert await answer(harness, "base-pirate") == (200, "answered as base-pirate")
        assert (await fake_state(harness, "base"))["lora_loads"] == ["base-pirate"]
        assert not harness.checker.violations, harness.checker.violations


async def test_adapters_registered_at_runtime_serve_at_once_and_outlive_a_restart(tmp_path, fake_cuda_vllm):
    config = {"settings": ONE_GPU, "models": {"base": base_model(fake_cuda_vllm)}}
    chef = adapter_dir(tmp_path, "chef")
    async with serve_in_process(config, tmp_path / "state") as harness:
        assert (await answer(harness, "base"))[0] == 200
        pid = harness.scheduler.services["base"].process.pid
        status, body = await post(harness, "/admin/adapters", {"name": "chef", "base": "base", "path": str(chef)})
        assert status == 201, body
        assert body["loaded"] is True  # the base runs: loaded now, not on first use
        assert await answer(harness, "chef") == (200, "answered as chef")
        assert harness.scheduler.services["base"].process.pid == pid  # no restart
        status, listing = await harness.admin("GET", "/adapters")
        assert listing["adapters"] == [
            {"name": "chef", "base": "base", "path": str(chef), "source": "admin", "usable": True, "loaded": True}
        ]

    # A new orchestrator on the same state directory still knows it.
    async with serve_in_process(config, tmp_path / "state") as harness:
        assert await answer(harness, "chef") == (200, "answered as chef")
        status, body = await delete(harness, "/admin/adapters/chef")
        assert status == 200 and body["removed"] is True
        assert (await fake_state(harness, "base"))["adapters"] == {}  # unloaded from the running base
        status, body = await harness.chat("chef")
        assert status == 404 and body["error"]["code"] == "model_not_found"
        assert (await answer(harness, "base"))[0] == 200


async def test_registration_refuses_what_cannot_serve_and_says_why(tmp_path, fake_cuda_vllm):
    config = {
        "settings": ONE_GPU,
        "models": {
            "base": base_model(fake_cuda_vllm, {"declared": adapter_dir(tmp_path, "declared")}),
            "plain": {"engine": "vllm", "model": str(fake_cuda_vllm), "memory_gb": 4},
        },
    }
    good = str(adapter_dir(tmp_path, "good"))
    cases = [
        ({"name": "x", "base": "base", "path": str(tmp_path / "nowhere")}, 400, "not a directory"),
        ({"name": "x", "base": "base", "path": str(adapter_dir(tmp_path, "big", rank=64))}, 400, "exceeds"),
        ({"name": "x", "base": "nope", "path": good}, 404, "does not exist"),
        ({"name": "x", "base": "plain", "path": good}, 400, "does not serve LoRA"),
        ({"name": "plain", "base": "base", "path": good}, 409, "already model 'plain'"),
        ({"name": "declared", "base": "base", "path": good}, 409, "in models.yaml"),
        ({"name": "x", "base": "base", "path": "relative/dir"}, 400, "absolute"),
        ({"name": "x", "base": "base"}, 400, "path"),
    ]
    async with serve_in_process(config, tmp_path / "state") as harness:
        for body, status, fragment in cases:
            got, answer_body = await post(harness, "/admin/adapters", body)
            assert (got, fragment in json.dumps(answer_body)) == (status, True), (body, answer_body)
        # vLLM itself refuses this one: with the base running, registration says so and keeps nothing.
        assert (await answer(harness, "base"))[0] == 200
        refused = str(adapter_dir(tmp_path, "refused", refused=True))
        got, body = await post(harness, "/admin/adapters", {"name": "r", "base": "base", "path": refused})
        assert got == 400 and "No adapter found" in body["error"]["message"]
        assert (await harness.chat("r"))[0] == 404
        status, body = await delete(harness, "/admin/adapters/declared")
        assert status == 409


async def test_a_declared_adapter_vllm_refuses_is_a_503_naming_vllms_reason(tmp_path, fake_cuda_vllm):
    broken = adapter_dir(tmp_path, "broken", refused=True)
    config = {"settings": ONE_GPU, "models": {"base": base_model(fake_cuda_vllm, {"broken": broken})}}
    async with serve_in_process(config, tmp_path / "state") as harness:
        status, body = await harness.chat("broken")
        assert status == 503
        assert body["error"]["code"] == "adapter_rejected" and "No adapter found" in body["error"]["message"]
        assert harness.scheduler.services["base"].in_flight == 0  # the lease went back
        assert await answer(harness, "base") == (200, "answered as base")


async def reload(harness: Harness, models: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(harness.config_path.read_text())
    harness.config_path.write_text(yaml.safe_dump({**config, "models": models}))
    async with harness.session.post(harness.url + "/admin/reload?drain=5") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_concurrent_first_requests_load_an_adapter_once(tmp_path, fake_cuda_vllm):
    config = {"settings": ONE_GPU, "models": {"base": base_model(fake_cuda_vllm, {"a": adapter_dir(tmp_path, "a")})}}
    async with serve_in_process(config, tmp_path / "state") as harness:
        answers = await asyncio.gather(*(answer(harness, "a") for _ in range(8)))
        assert answers == [(200, "answered as a")] * 8
        assert (await fake_state(harness, "base"))["lora_loads"] == ["a"]


async def test_reloads_change_adapters_live_and_lora_settings_by_restart(tmp_path, fake_cuda_vllm):
    one, two, moved = adapter_dir(tmp_path, "one"), adapter_dir(tmp_path, "two"), adapter_dir(tmp_path, "moved")
    models = {"base": base_model(fake_cuda_vllm, {"one": one})}
    async with serve_in_process({"settings": ONE_GPU, "models": models}, tmp_path / "state") as harness:
        assert (await answer(harness, "one"))[0] == 200
        pid = harness.scheduler.services["base"].process.pid

        # Adapters added and moved in models.yaml: no restart; the moved one is replaced in place.
        report = await reload(harness, {"base": base_model(fake_cuda_vllm, {"one": moved, "two": two})})
        assert report["changed"] == [] and report["updated"] == ["base"]
        assert await answer(harness, "two") == (200, "answered as two")
        assert await answer(harness, "one") == (200, "answered as one")
        state = await fake_state(harness, "base")
        assert state["lora_loads"] == ["one", "two", "one in place"] and state["adapters"]["one"] == str(moved)
        assert harness.scheduler.services["base"].process.pid == pid

        # A registered adapter whose name a reload gives to a model: the model wins, the listing says why.
        chef = adapter_dir(tmp_path, "chef")
        status, _ = await post(harness, "/admin/adapters", {"name": "chef", "base": "base", "path": str(chef)})
        assert status == 201
        lora = {"max_rank": 8, "max_loras": 3, "adapters": {"one": str(moved)}}  # also: a LoRA setting changes
        chef_model = {"engine": "vllm", "model": str(fake_cuda_vllm), "memory_gb": 4, "aliases": ["chef"], "gpus": 0}
        report = await reload(harness, {"base": {**base_model(fake_cuda_vllm), "lora": lora}, "other": chef_model})
        assert report["changed"] == ["base"]  # max_loras: vLLM must start again
        status, body = await harness.chat("two")
        assert status == 404  # no longer declared
        status, listing = await harness.admin("GET", "/adapters")
        chef_row = next(row for row in listing["adapters"] if row["name"] == "chef")
        assert chef_row["usable"] is False and "model 'other'" in chef_row["reason"]
        assert await answer(harness, "one") == (200, "answered as one")
        assert harness.scheduler.services["base"].process.pid != pid
        assert (await delete(harness, "/admin/adapters/chef"))[0] == 200
        assert not harness.checker.violations, harness.checker.violations
