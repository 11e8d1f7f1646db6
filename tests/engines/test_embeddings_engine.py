"""The embeddings engine as the orchestrator runs it: models/embeddings/server.py
as a real process serving the real all-MiniLM-L6-v2 (prepared by
./scripts/install.sh; override with MODELYARD_EMBEDDINGS_PYTHON and
MODELYARD_MINILM_DIR), checked against sentence-transformers itself."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ROOT
from tests.support.encoders import TEXTS, cosine, decode_base64, minilm_dir, reference
from tests.support.engine_process import Engine, engine_python, start_engine

pytestmark = pytest.mark.slow

MODEL_ID = "minilm-test"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    log = tmp_path_factory.mktemp("embeddings") / "engine.log"
    argv = ["--model-path", str(minilm_dir()), "--model-id", MODEL_ID, "--max-batch-size", "32", "--max-wait-ms", "20"]
    started = start_engine("embeddings", log, *argv)
    yield started
    started.stop()


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.url, timeout=60) as http:
        yield http


def embed(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": MODEL_ID, **body})


def test_vectors_match_sentence_transformers(client: httpx.Client) -> None:
    response = embed(client, input=TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL_ID
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 384 for v in vectors)
    for got, want in zip(vectors, reference(TEXTS), strict=True):
        assert cosine(got, want) > 1 - 1e-4
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 1e-4
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS) * 2


def test_a_real_model_ranks_meaning(client: httpx.Client) -> None:
    cat, kitten, stocks = (d["embedding"] for d in embed(client, input=TEXTS[:3]).json()["data"])
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3


def test_base64_is_the_same_vector_as_float(client: httpx.Client) -> None:
    as_float = embed(client, input="A cat sits on the mat.").json()["data"][0]["embedding"]
    as_base64 = embed(client, input="A cat sits on the mat.", encoding_format="base64").json()["data"][0]["embedding"]
    assert isinstance(as_base64, str)
    assert max(abs(a - b) for a, b in zip(decode_base64(as_base64), as_float, strict=True)) < 1e-6


def test_openai_client_default_request(engine: Engine) -> None:
    client = openai.OpenAI(base_url=engine.url + "/v1", api_key="unused")
    result = client.embeddings.create(model=MODEL_ID, input=["hello world", "goodbye"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens == 4 + 3  # [CLS] hello world [SEP], [CLS] goodbye [SEP]


def test_concurrent_requests_are_batched_and_each_gets_its_own_vectors(engine: Engine) -> None:
    want = reference(TEXTS)
    before = engine.health()["batching"]
    requests = [TEXTS[i % len(TEXTS)] for i in range(40)]
    with httpx.Client(base_url=engine.url, timeout=60) as http, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda text: embed(http, input=[text]), requests))
    for text, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = answer.json()["data"][0]["embedding"]
        assert cosine(got, want[TEXTS.index(text)]) > 1 - 1e-4
    after = engine.health()["batching"]
    calls, items = after["batches"] - before["batches"], after["items"] - before["items"]
    assert items == 40
    assert calls < 40, after  # requests shared model calls


def test_dimensions_cut_and_renormalise(client: httpx.Client) -> None:
    full = embed(client, input="A cat sits on the mat.").json()["data"][0]["embedding"]
    short = embed(client, input="A cat sits on the mat.", dimensions=64).json()["data"][0]["embedding"]
    assert len(short) == 64
    assert abs(sum(x * x for x in short) - 1) < 1e-4
    assert cosine(short, full[:64]) > 1 - 1e-5


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": ""}, "invalid_value", "input"),
        ({"input": ["fine", "  "]}, "invalid_value", "input.1"),
        ({"input": []}, "invalid_value", "input"),
        ({"input": [101, 2023, 102]}, "unsupported_input", "input"),
        ({"input": "word " * 300}, "context_length_exceeded", "input"),
        ({"input": ["ok", "word " * 300]}, "context_length_exceeded", "input.1"),
        ({"input": "hi", "dimensions": 1000}, "invalid_value", "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, "invalid_request", "encoding_format"),
        ({"input": "x", "model": ""}, "invalid_request", "model"),
        ({"inputs": "hi"}, "invalid_request", "input"),
    ],
)
def test_bad_requests_get_precise_400s(client: httpx.Client, body: dict[str, object], code: str, param: str) -> None:
    response = client.post("/v1/embeddings", json={"model": MODEL_ID, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert "Traceback" not in response.text


def test_too_many_inputs(client: httpx.Client) -> None:
    response = embed(client, input=["x"] * 2049)
    assert response.status_code == 400 and "at most 2048" in response.json()["error"]["message"]


def test_truncate_cuts_long_inputs_instead(tmp_path: Path) -> None:
    argv = ["--model-path", str(minilm_dir()), "--model-id", MODEL_ID, "--truncate", "--max-batch-size", "1"]
    engine = start_engine("embeddings", tmp_path / "engine.log", *argv)
    try:
        long_text = "word " * 300
        response = httpx.post(engine.url + "/v1/embeddings", json={"model": MODEL_ID, "input": long_text}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == 256  # the model's context, not the 302 sent
        assert engine.health()["batching"]["max_batch_size"] == 1
    finally:
        engine.stop()


def test_missing_model_directory_fails_the_load_with_the_reason(tmp_path: Path) -> None:
    argv = [str(engine_python("embeddings")), str(ROOT / "models/embeddings/server.py"), "--port", "0",
            "--model-path", str(tmp_path / "nowhere"), "--model-id", MODEL_ID]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 3
    assert "modelyard: load failed: FileNotFoundError: model directory not found" in done.stderr
