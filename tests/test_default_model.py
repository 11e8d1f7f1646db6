"""The README's promise: the embedded default config, started with
scripts/start-all.sh, answers with a real model (SmolLM2-135M on vLLM's CPU
build here) through the orchestrator, streaming and not, and through the
official openai client; and embeddings from the real all-MiniLM-L6-v2 on the
same endpoint."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from core.process import free_port
from tests.conftest import ROOT, instance_processes, wait_until

pytestmark = pytest.mark.slow

QUESTION = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
ENVS = Path(os.environ.get("MODELYARD_ENVS_DIR", ROOT / "state" / "envs"))
MODELS = Path(os.environ.get("MODELYARD_SMOLLM2_DIR", ROOT / "state" / "models" / "smollm2-135m")).parent


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    for engine, model in (("vllm", "smollm2-135m"), ("embeddings", "all-minilm-l6-v2")):
        if not (ENVS / engine / "bin" / "python").exists() or not (MODELS / model).exists():
            pytest.fail(f"the {engine} engine or the default model {model} is missing: run ./scripts/install.sh")
    # A state directory of its own, sharing the installed environments and model.
    state = tmp_path_factory.mktemp("appliance") / "state"
    state.mkdir()
    (state / "models").symlink_to(MODELS)
    log = state.parent / "start-all.log"
    port = free_port()
    env = {**os.environ, "MODELYARD_STATE_DIR": str(state), "MODELYARD_ENVS_DIR": str(ENVS)}
    process = subprocess.Popen(
        ["bash", "scripts/start-all.sh", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: "modelyard listening on" in log.read_text() or process.poll() is not None, 120)
        assert process.poll() is None, log.read_text()
        yield url, log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert wait_until(lambda: not instance_processes(state), 10)


def test_the_drift_monitor_sees_the_real_models_requests(appliance):
    """The default config runs the drift monitor: a monitor on the chat model's
    requests gets each one's real tokens, finish reason and time to first token."""
    url, log = appliance
    features = [{"name": name, "kind": kind} for name, kind in (
        ("prompt_tokens", "numeric"), ("completion_tokens", "numeric"), ("ttft_ms", "numeric"),
        ("latency_ms", "numeric"), ("finish_reason", "categorical"), ("stream", "categorical"))]
    made = httpx.post(url + "/drift/monitors", json={"name": "default-chat", "model": "smollm2-135m",
                                                     "source": "requests", "features": features}, timeout=60)
    assert made.status_code == 201, made.text
    for stream in (False, True):
        with httpx.stream("POST", url + "/v1/chat/completions", json={**QUESTION, "stream": stream},
                          timeout=180) as answer:
            assert answer.status_code == 200
            answer.read()
    monitor = made.json()["id"]
    assert wait_until(lambda: httpx.get(f"{url}/drift/monitors/{monitor}").json()["events_seen"] == 2, 15)
    with sqlite3.connect(log.parent / "state" / "drift.db") as db:
        rows = [json.loads(values) for (values,) in db.execute(
            'SELECT "values" FROM events WHERE monitor_id = ? ORDER BY seq', [monitor])]
    plain, streamed = rows
    for row in rows:
        assert row["prompt_tokens"] > 5 and row["completion_tokens"] > 0
        assert row["finish_reason"] in ("stop", "length") and row["latency_ms"] > 0
    assert (plain["stream"], streamed["stream"]) == ("false", "true")
    assert plain["ttft_ms"] is None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]


def test_the_simulator_measures_the_real_model_and_retrains(appliance):
    """The default config runs the simulator: a benchmark job sweeps SmolLM2 on
    vLLM through the orchestrator, stores one record per point, retrains the
    regressor and reports its leave-one-out error; a run then recommends a
    configuration for this host's CPU."""
    url, log = appliance
    sweep = {"model": "smollm2-135m", "concurrency": [1, 4],
             "lengths": [{"input_tokens": 64, "output_tokens": 16}]}
    started = httpx.post(url + "/simulator/benchmarks", json=sweep, timeout=120)
    assert started.status_code == 202, started.text
    job_url = f"{url}/simulator/benchmarks/{started.json()['id']}"
    assert wait_until(lambda: httpx.get(job_url, timeout=30).json()["state"] != "running", 300, interval=1)
    job = httpx.get(job_url, timeout=30).json()
    assert job["state"] == "done", job
    assert job["records"] == 2
    evaluation = job["evaluation"]
    print("leave-one-out mean absolute % error:", json.dumps(evaluation["mean_abs_pct_error"]))
    assert evaluation["records"] >= 2 + 31  # the shipped records and these
    for method in ("heuristic", "regressor"):
        assert all(error >= 0 for error in evaluation["mean_abs_pct_error"][method].values())
    with sqlite3.connect(log.parent / "state" / "simulator.db") as db:
        records = [json.loads(r) for (r,) in db.execute("SELECT record FROM records WHERE job_id = ?", [job["id"]])]
    assert [r["workload"]["concurrency"] for r in records] == [1, 4]
    for record in records:
        assert record["device"]["name"] == "host-cpu" and record["deployment"]["block_size"] == 128
        assert 0 < record["measured"]["ttft_ms"] < record["measured"]["e2e_latency_s"] * 1000
        assert record["measured"]["total_throughput"] > 0 and record["measured"]["tpot_ms"] > 0

    run = httpx.post(url + "/simulator/run", json={"model": "smollm2-135m", "input_tokens": 64,
                                                   "output_tokens": 16, "concurrency": 4}, timeout=60)
    assert run.status_code == 200, run.text
    assert run.json()["recommendations"][0]["device"] == "host-cpu"


def test_start_all_prints_where_it_listens_and_a_curl_example(appliance):
    url, log = appliance
    text = log.read_text()
    assert f"modelyard listening on {url}" in text
    assert "curl http://localhost:" in text and '"model":"smollm2-135m"' in text


def test_the_readme_curl_request_gets_a_real_answer(appliance):
    url, _ = appliance
    response = httpx.post(url + "/v1/chat/completions", json=QUESTION, timeout=180)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] > 0
    assert float(response.headers["x-modelyard-overhead-ms"]) >= 0  # the figure itself: scripts/bench.sh


def test_streaming_sends_tokens_as_sse_chunks_ending_with_done(appliance):
    url, _ = appliance
    events = []
    with httpx.stream("POST", url + "/v1/chat/completions", json={**QUESTION, "stream": True}, timeout=180) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert sum(1 for p in pieces if p) > 3  # token by token, not one blob
    assert "Paris" in "".join(pieces)


def test_the_official_openai_client_works_unchanged(appliance):
    url, _ = appliance
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    answer = client.chat.completions.create(model="smollm2-135m", messages=QUESTION["messages"])
    assert "Paris" in (answer.choices[0].message.content or "")
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION["messages"], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in text
    assert [m.id for m in client.models.list()] == ["smollm2-135m", "all-minilm-l6-v2"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=QUESTION["messages"])


def test_embeddings_from_the_default_encoder(appliance):
    url, _ = appliance
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply."]
    result = client.embeddings.create(model="all-minilm", input=texts)  # an alias; base64 on the wire
    cat, kitten, stocks = (item.embedding for item in result.data)
    assert len(cat) == 384

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are normalised

    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3
    assert result.usage.prompt_tokens > 0
    # A text model is not an encoder: the route refuses it by name.
    response = httpx.post(url + "/v1/embeddings", json={"model": "smollm2-135m", "input": "hi"}, timeout=30)
    assert response.status_code == 400, response.text
