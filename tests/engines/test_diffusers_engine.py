"""The diffusers engine behind the orchestrator: a tiny random-weight Stable
Diffusion pipeline built at test time (tests/support/tiny_sd.py, no download)
served on POST /v1/images/generations. n images of the requested size, as
base64 and as expiring signed URLs the orchestrator serves; the same seed
gives the same image; bad sizes are 400s.

Needs the diffusers engine's environment: ./scripts/install.sh --engine diffusers.
"""

from __future__ import annotations

import base64
import struct
import subprocess
from typing import Any
from urllib.parse import parse_qs, urlparse

import openai
import pytest

from tests.conftest import ROOT
from tests.support.engine_process import engine_python

pytestmark = pytest.mark.slow


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def orch(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Any:
    python = engine_python("diffusers")
    pipeline = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    built = subprocess.run(
        [str(python), str(ROOT / "tests" / "support" / "tiny_sd.py"), str(pipeline)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    model = {"type": "image", "engine": "diffusers", "model": str(pipeline), "args": {"default_steps": 2},
             "memory_gb": 1, "startup_timeout": 180}
    return module_orchestrator(
        {"settings": {"file_ttl": 600}, "models": {"tiny-sd": model}},
        extra_env={"MODELYARD_ENVS_DIR": str(python.parent.parent.parent)},
    )


def generate(orch: Any, **fields: Any) -> Any:
    with orch.client(timeout=300) as client:
        return client.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "a red cat", **fields})


def test_n_images_of_the_requested_size_come_back_inline(orch):
    response = generate(orch, n=2, size="64x48", response_format="b64_json", seed=1)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2
    images = [base64.b64decode(item["b64_json"]) for item in data]
    assert [png_size(image) for image in images] == [(64, 48), (64, 48)]
    assert images[0] != images[1]  # two images, not one twice


def test_urls_are_signed_served_and_refused_when_tampered_with(orch):
    response = generate(orch, n=1, size="32x32", seed=3)
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == orch.url and parsed.path.startswith("/files/images/")
    with orch.client() as client:
        image = client.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert png_size(image.content) == (32, 32)
        query = parse_qs(parsed.query)
        expires, signature = int(query["expires"][0]), query["signature"][0]
        forged = client.get(parsed.path, params={"expires": expires + 3600, "signature": signature})
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"
        unsigned = client.get(parsed.path)
        assert unsigned.status_code == 400
        other = client.get("/files/images/../../files.key", params={"expires": expires, "signature": signature})
        assert other.status_code in (403, 404)


def test_the_same_seed_gives_the_same_image(orch):
    def image(seed: int) -> bytes:
        response = generate(orch, size="32x32", response_format="b64_json", seed=seed)
        assert response.status_code == 200, response.text
        return base64.b64decode(response.json()["data"][0]["b64_json"])

    assert image(7) == image(7)
    assert image(7) != image(8)


def test_the_official_openai_client_works(orch):
    client = openai.OpenAI(base_url=orch.url + "/v1", api_key="unused")
    result = client.images.generate(model="tiny-sd", prompt="a boat", size="32x32", n=1, response_format="b64_json")
    assert png_size(base64.b64decode(result.data[0].b64_json or "")) == (32, 32)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"size": "60x64"}, "multiples of 8"),
        ({"size": "4096x4096"}, "limit"),
        ({"size": "large"}, "size"),
        ({"n": 11}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"prompt": ""}, "prompt"),
        ({"stream": True}, "does not stream"),
    ],
)
def test_bad_requests_are_400s_that_name_the_problem(orch, fields, fragment):
    response = generate(orch, **fields)
    assert response.status_code == 400, response.text
    assert fragment in response.text
