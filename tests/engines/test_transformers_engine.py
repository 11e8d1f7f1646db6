"""The transformers engine as the orchestrator runs it: models/transformers/server.py
as a real process, serving the real SmolLM2-135M-Instruct (see scripts/install.sh).

Needs the engine's environment and the converted model; both come from
./scripts/install.sh. Override them with MODELYARD_TRANSFORMERS_PYTHON and
MODELYARD_SMOLLM2_DIR.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.engine_process import Engine, prepared_model
from tests.support.engine_process import start_engine as start_engine_process

pytestmark = pytest.mark.slow

MODEL_ID = "smollm2-test"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# A raw prompt that the model continues for as long as it is allowed to.
ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8,"


def start_engine(log_path: Path, *extra: str) -> Engine:
    model = prepared_model("MODELYARD_SMOLLM2_DIR", "smollm2-135m", "config.json")
    argv = ["--model-path", str(model), "--model-id", MODEL_ID, "--default-temperature", "0", *extra]
    return start_engine_process("transformers", log_path, *argv)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    started = start_engine(tmp_path_factory.mktemp("engine") / "engine.log")
    yield started
    started.stop()


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.url, timeout=60) as http:
        yield http


def sse_events(response: httpx.Response, limit: int | None = None) -> list[Any]:
    """The decoded `data:` payloads of a stream; "[DONE]" stays a string."""
    events: list[Any] = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
        if limit is not None and len(events) >= limit:
            break
    return events


def assert_openai_error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def test_chat_answers_france(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": FRANCE, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_matches_non_stream(client: httpx.Client) -> None:
    request = {"model": MODEL_ID, "messages": FRANCE, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=request).json()
    stream_request = {**request, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=stream_request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL_ID for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"]]
    assert len(contents) > 1, "expected the answer token by token, not in one piece"
    assert "".join(contents) == whole["choices"][0]["message"]["content"]
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completions(client: httpx.Client) -> None:
    request = {"model": MODEL_ID, "prompt": ENDLESS, "max_tokens": 6, "temperature": 0}
    body = client.post("/v1/completions", json=request).json()
    assert body["object"] == "text_completion" and body["model"] == MODEL_ID
    choice = body["choices"][0]
    assert choice["text"].strip() and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 6

    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_strings(client: httpx.Client) -> None:
    request = {"model": MODEL_ID, "prompt": ENDLESS, "max_tokens": 30, "temperature": 0, "stop": [" 12,"]}
    choice = client.post("/v1/completions", json=request).json()["choices"][0]
    assert choice["text"] == " 9, 10, 11,", choice
    assert choice["finish_reason"] == "stop"
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as response:
        events = sse_events(response)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]


def test_models(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL_ID]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": MODEL_ID}, "messages"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": FRANCE, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": "hello"}, "messages"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": FRANCE, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": FRANCE, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            "/v1/chat/completions",
            {"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        ("/v1/completions", {"model": MODEL_ID, "prompt": ["one", "two"]}, "prompt"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": 42}, "prompt"),
    ],
)
def test_bad_input_is_a_400(client: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(client.post(path, json=body))
    assert error["param"] == param, error


def test_invalid_json_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(response)


def test_prompt_longer_than_context_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hello " * 3000})
    error = assert_openai_error(response)
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]


def test_client_disconnect_stops_generation(engine: Engine, client: httpx.Client) -> None:
    request = {"model": MODEL_ID, "prompt": ENDLESS, "max_tokens": 2000, "stream": True}
    with client.stream("POST", "/v1/completions", json=request) as response:
        assert len(sse_events(response, limit=3)) == 3
    # Left running, those 2000 tokens would hold the only generation slot for a minute.
    began = time.monotonic()
    short = client.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hello", "max_tokens": 3})
    assert short.status_code == 200
    assert time.monotonic() - began < 5, "the abandoned stream kept generating"
    cancelled = [json.loads(line) for line in engine.log().splitlines() if '"generation cancelled"' in line]
    assert cancelled and cancelled[-1]["completion_tokens"] < 200


def test_sigterm_exits_within_grace(tmp_path: Path) -> None:
    engine = start_engine(tmp_path / "engine.log", "--shutdown-grace", "3")
    try:
        request = {"model": MODEL_ID, "prompt": ENDLESS, "max_tokens": 2000, "stream": True}
        with httpx.Client(base_url=engine.url, timeout=30) as http:
            with http.stream("POST", "/v1/completions", json=request) as response:
                sse_events(response, limit=2)  # a generation is running when the signal comes
                began = time.monotonic()
                engine.process.send_signal(signal.SIGTERM)
                code = engine.process.wait(3 + 5)
        assert time.monotonic() - began < 3 + 5
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM, not a crash.
        assert code in (0, -signal.SIGTERM), engine.log()[-3000:]
    finally:
        engine.stop()


def test_sleep_and_wake(client: httpx.Client) -> None:
    """The sleep tier's endpoints: asleep, it refuses work (the orchestrator
    wakes it first); awake, it answers as before. On this CPU-only machine
    the weights stay on the CPU, so this checks the contract, not the move."""
    assert client.post("/sleep").json() == {"asleep": True}
    refused = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": FRANCE})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "asleep"
    assert client.get("/health").status_code == 200  # still healthy: it is alive, only asleep
    began = time.monotonic()
    assert client.post("/wake").json() == {"asleep": False}
    print(f"\nwake on CPU: {(time.monotonic() - began) * 1000:.1f} ms")
    answer = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": FRANCE, "max_tokens": 12, "temperature": 0})
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
