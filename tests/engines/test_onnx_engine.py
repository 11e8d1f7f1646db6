"""The ONNX path: models/onnx/convert.py turns the real all-MiniLM-L6-v2 into
an ONNX model (checked against PyTorch, refused when off), and
models/onnx/server.py serves it with ONNX Runtime, matching
sentence-transformers itself. TensorRT cannot exist on these machines: the
tests check that both tools detect that and say so."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.encoders import TEXTS, cosine, minilm_dir, reference
from tests.support.engine_process import Engine, engine_python, start_engine

pytestmark = pytest.mark.slow

MODEL_ID = "minilm-onnx-test"


def run_converter(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [str(engine_python("onnx")), str(ROOT / "models/onnx/convert.py"), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "minilm"
    done = run_converter("--model", str(minilm_dir()), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def engine(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    log = tmp_path_factory.mktemp("onnx-engine") / "engine.log"
    started = start_engine("onnx", log, "--model-path", str(converted), "--model-id", MODEL_ID)
    yield started
    started.stop()


def test_conversion_is_checked_and_recorded(converted: Path) -> None:
    manifest = json.loads((converted / "modelyard-onnx.json").read_text())
    assert (manifest["dimension"], manifest["max_tokens"], manifest["pooling"]) == (384, 256, "mean")
    assert manifest["normalized"] is True and manifest["opset"] == 17
    check = manifest["check"]
    assert check["max_abs_diff"] <= check["tolerance"] == 1e-4 and check["inputs"] >= 5
    assert (converted / "model.onnx").stat().st_size > 80_000_000 and (converted / "tokenizer.json").exists()
    # No TensorRT here, and the manifest says why instead of pretending.
    assert manifest["tensorrt"]["built"] is False and "TensorRT" in manifest["tensorrt"]["reason"]


def test_a_failed_check_refuses_the_artefact(tmp_path: Path) -> None:
    out = tmp_path / "refused"
    done = run_converter("--model", str(minilm_dir()), "--out", str(out), "--tolerance", "1e-12")
    assert done.returncode == 1
    assert "differs from PyTorch" in done.stderr and "refused" in done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial one


def test_required_tensorrt_fails_where_it_cannot_run(tmp_path: Path) -> None:
    done = run_converter("--model", str(minilm_dir()), "--out", str(tmp_path / "trt"), "--tensorrt", "require")
    assert done.returncode == 1
    assert "TensorRT was required but cannot run here" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_neither_an_encoder_nor_a_classifier_is_refused(tmp_path: Path) -> None:
    done = run_converter("--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "is neither a sentence-transformers model (modules.json)" in done.stderr
    assert "--task" in done.stderr
    forced = run_converter("--model", str(tmp_path), "--out", str(tmp_path / "out"), "--task", "embedding")
    assert forced.returncode == 1 and "no modules.json" in forced.stderr


def test_served_vectors_match_sentence_transformers(engine: Engine) -> None:
    response = httpx.post(engine.url + "/v1/embeddings", json={"model": MODEL_ID, "input": TEXTS}, timeout=60)
    assert response.status_code == 200, response.text
    vectors = [d["embedding"] for d in response.json()["data"]]
    for got, want in zip(vectors, reference(TEXTS), strict=True):
        assert cosine(got, want) > 1 - 1e-4
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 1e-4
    assert engine.health()["device"] == "CPUExecutionProvider"


def test_concurrent_requests_share_onnx_runs(engine: Engine) -> None:
    want = reference(TEXTS)
    before = engine.health()["batching"]
    requests = [TEXTS[i % len(TEXTS)] for i in range(32)]
    with httpx.Client(base_url=engine.url, timeout=60) as http, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: http.post("/v1/embeddings", json={"model": MODEL_ID, "input": t}), requests))
    for text, answer in zip(requests, answers, strict=True):
        assert cosine(answer.json()["data"][0]["embedding"], want[TEXTS.index(text)]) > 1 - 1e-4
    after = engine.health()["batching"]
    assert after["items"] - before["items"] == 32
    assert after["batches"] - before["batches"] < 32  # requests shared ONNX Runtime calls


def test_same_request_checks_as_the_pytorch_engine(engine: Engine) -> None:
    too_long = httpx.post(engine.url + "/v1/embeddings", json={"model": MODEL_ID, "input": "word " * 300}, timeout=30)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("cuda", "CUDAExecutionProvider is not available here (onnxruntime has"),
        ("tensorrt", "TensorrtExecutionProvider is not available here"),
    ],
)
def test_asking_for_a_gpu_provider_that_is_absent_fails_the_load_saying_so(
    converted: Path, provider: str, message: str
) -> None:
    argv = [str(engine_python("onnx")), str(ROOT / "models/onnx/server.py"), "--port", "0",
            "--model-path", str(converted), "--model-id", MODEL_ID, "--provider", provider]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 3
    assert "modelyard: load failed: RuntimeError:" in done.stderr and message in done.stderr


def test_a_directory_without_a_conversion_fails_the_load(tmp_path: Path) -> None:
    argv = [str(engine_python("onnx")), str(ROOT / "models/onnx/server.py"), "--port", "0",
            "--model-path", str(tmp_path), "--model-id", MODEL_ID]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 3 and "convert the model with models/onnx/convert.py" in done.stderr
