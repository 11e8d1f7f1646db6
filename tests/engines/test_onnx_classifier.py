"""Image classification on the onnx engine: a tiny random-weight ViT built at
test time (tests/support/tiny_image_classifier.py, no download), converted by
models/onnx/convert.py, served on POST /v1/predict behind the orchestrator
and the dynamic batcher. Scores equal PyTorch's through the model's own image
processor (tests/support/classify_reference.py) for images of any size, mode
and format; bad images are 400s that name the input.

Needs the onnx engine's environment: ./scripts/install.sh --engine onnx.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.engine_process import Engine, engine_python, start_engine

pytestmark = pytest.mark.slow

LABELS = ["cat", "dog", "bird"]


def run(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [str(engine_python("onnx")), str(ROOT / script), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def build(directory: Path, processor: str) -> Path:
    done = run("tests/support/tiny_image_classifier.py", str(directory), "--processor", processor)
    assert done.returncode == 0, done.stderr[-3000:]
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("vit") / "model", "vit")


@pytest.fixture(scope="module")
def converted(model_dir: Path) -> Path:
    out = model_dir.parent / "onnx"
    done = run("models/onnx/convert.py", "--model", str(model_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> dict[str, Any]:
    done = run("tests/support/classify_reference.py", str(model_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def orch(module_orchestrator, converted: Path) -> Any:
    python = engine_python("onnx")
    vit = {"type": "classification", "engine": "onnx", "model": str(converted), "args": {"max_batch_size": 8}}
    return module_orchestrator(
        {"models": {"tiny-vit": vit, "vit-said-embedding": {**vit, "type": "embedding"}}},
        extra_env={"MODELYARD_ENVS_DIR": str(python.parent.parent.parent)},
    )


def predict(orch: Any, images: Any, **fields: Any) -> httpx.Response:
    with orch.client(timeout=120) as client:
        return client.post("/v1/predict", json={"model": "tiny-vit", "input": images, **fields})


def test_the_conversion_records_labels_preprocessing_and_its_checks(converted: Path) -> None:
    manifest = json.loads((converted / "modelyard-onnx.json").read_text())
    assert manifest["task"] == "image-classification" and manifest["labels"] == LABELS
    assert manifest["image_size"] == [32, 32] and manifest["preprocess"]["resize"] == {"height": 32, "width": 32}
    check = manifest["check"]
    assert check["preprocess_max_abs_diff"] <= 1e-5 and check["max_abs_diff"] <= check["tolerance"] == 1e-4


def test_scores_equal_pytorch_for_images_of_every_size_mode_and_format(orch, reference) -> None:
    images = list(reference["images"])
    images[0] = "data:image/png;base64," + images[0]  # a data: URL is taken too
    response = predict(orch, images, top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"] == {"images": len(images)} and body["model"] == "tiny-vit"
    for item, want in zip(body["data"], reference["scores"], strict=True):
        got = {label["label"]: label["score"] for label in item["labels"]}
        assert set(got) == set(LABELS)
        for index, name in enumerate(LABELS):
            assert abs(got[name] - want[index]) < 1e-5, (item["index"], name)
        ranked = [label["score"] for label in item["labels"]]
        assert ranked == sorted(ranked, reverse=True)


def test_line_wrapped_base64_is_taken(orch, reference) -> None:
    image = reference["images"][2]
    wrapped = "\n".join(image[i:i + 76] for i in range(0, len(image), 76))  # as the base64 tool writes it
    response = predict(orch, wrapped, top_k=3)
    assert response.status_code == 200, response.text
    got = {label["label"]: label["score"] for label in response.json()["data"][0]["labels"]}
    assert all(abs(got[name] - reference["scores"][2][i]) < 1e-5 for i, name in enumerate(LABELS))


def test_top_k_keeps_the_best_and_is_capped_by_the_labels(orch, reference) -> None:
    image = reference["images"][1]
    best = max(range(3), key=lambda i: reference["scores"][1][i])
    one = predict(orch, image, top_k=1)
    assert one.status_code == 200, one.text
    assert [(label["label"], label["id"]) for label in one.json()["data"][0]["labels"]] == [(LABELS[best], best)]
    many = predict(orch, image, top_k=50)
    assert len(many.json()["data"][0]["labels"]) == 3


@pytest.mark.parametrize(
    ("images", "param", "fragment"),
    [
        ("not base64!", "input", "is not base64"),
        (["aGVsbG8="], "input.0", "is not an image"),  # base64 of "hello"
        (["REAL", "https://example.com/cat.png"], "input.1", "images are not fetched"),
        (["UDYKMSAxCjI1NQoAAAA="], "input.0", "can read as PNG, JPEG"),  # a 1x1 PPM: not an accepted format
        ([], "input", "must not be an empty list"),
    ],
)
def test_bad_images_are_400s_naming_the_input(orch, reference, images, param, fragment) -> None:
    images = [reference["images"][0] if image == "REAL" else image for image in images] \
        if isinstance(images, list) else images
    response = predict(orch, images)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_bad_fields_and_wrong_routes_are_400s(orch, reference) -> None:
    assert predict(orch, reference["images"][0], top_k=0).status_code == 400
    with orch.client() as client:
        embeddings = client.post("/v1/embeddings", json={"model": "tiny-vit", "input": "a cat"})
        assert embeddings.status_code == 400 and embeddings.json()["error"]["code"] == "wrong_model_type"


def test_a_classifier_configured_as_an_embedding_model_fails_its_load_saying_so(orch) -> None:
    with orch.client(timeout=120) as client:
        response = client.post("/v1/embeddings", json={"model": "vit-said-embedding", "input": "a cat"})
    assert response.status_code == 503, response.text
    assert "is task 'image-classification'" in response.json()["error"]["message"]


@pytest.mark.parametrize("processor", ["convnext", "convnext-crop", "bit"])
def test_other_image_processors_convert_with_the_same_pixels(tmp_path: Path, processor: str) -> None:
    model = build(tmp_path / processor, processor)
    done = run("models/onnx/convert.py", "--model", str(model), "--out", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "onnx" / "modelyard-onnx.json").read_text())
    assert manifest["image_size"] == [32, 32] and manifest["check"]["preprocess_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize(
    ("processor", "message"),
    [
        ("padded", "padding is not supported"),
        # LeViT resizes in its own way: the pixel comparison is what refuses it.
        ("levit", "the server's preprocessing differs from LevitImageProcessorPil"),
    ],
)
def test_an_image_processor_it_cannot_reproduce_is_refused(tmp_path: Path, processor: str, message: str) -> None:
    model = build(tmp_path / processor, processor)
    done = run("models/onnx/convert.py", "--model", str(model), "--out", str(tmp_path / "onnx"))
    assert done.returncode == 1 and message in done.stderr
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "onnx.partial").exists()


@pytest.fixture(scope="module")
def engine(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    log = tmp_path_factory.mktemp("vit-engine") / "engine.log"
    started = start_engine("onnx", log, "--model-path", str(converted), "--model-id", "tiny-vit")
    yield started
    started.stop()


def test_concurrent_requests_share_model_calls(engine: Engine, reference) -> None:
    images = reference["images"]
    before = engine.health()["batching"]
    picks = [i % len(images) for i in range(24)]
    with httpx.Client(base_url=engine.url, timeout=60) as http, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: http.post("/v1/predict", json={"model": "tiny-vit", "input": images[i]}),
                                picks))
    for pick, answer in zip(picks, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = {label["label"]: label["score"] for label in answer.json()["data"][0]["labels"]}
        assert all(abs(got[name] - reference["scores"][pick][i]) < 1e-5 for i, name in enumerate(LABELS))
    after = engine.health()["batching"]
    assert after["items"] - before["items"] == 24
    assert after["batches"] - before["batches"] < 24  # images of different requests shared a call
