"""The musicgen engine behind the orchestrator: tiny random-weight MusicGen
models (mono and stereo) built at test time (tests/support/tiny_musicgen.py,
no download) served on POST /v1/audio/generations. A WAV of exactly the
requested duration at the model's sample rate, as the body, inline or under
a signed URL; the same seed gives the same audio; bad requests are 400s.

Needs the musicgen engine's environment: ./scripts/install.sh --engine musicgen.
"""

from __future__ import annotations

import array
import base64
import io
import subprocess
import wave
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import ROOT
from tests.support.engine_process import engine_python

pytestmark = pytest.mark.slow

SAMPLE_RATE = 16000  # the tiny model's Encodec


def read_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(channels, sample rate, frames, PCM bytes); fails on anything that is not a WAV."""
    with wave.open(io.BytesIO(data)) as audio:
        assert audio.getsampwidth() == 2, "16-bit PCM expected"
        return audio.getnchannels(), audio.getframerate(), audio.getnframes(), audio.readframes(audio.getnframes())


@pytest.fixture(scope="module")
def orch(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Any:
    python = engine_python("musicgen")
    models = {}
    for name, channels in (("tiny-musicgen", "1"), ("tiny-musicgen-stereo", "2")):
        path = tmp_path_factory.mktemp(name) / "model"
        built = subprocess.run(
            [str(python), str(ROOT / "tests" / "support" / "tiny_musicgen.py"), str(path), "--channels", channels],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert built.returncode == 0, built.stderr[-3000:]
        models[name] = {"type": "audio", "engine": "musicgen", "model": str(path), "args": {"default_duration": 0.5},
                        "memory_gb": 1, "startup_timeout": 180}
    return module_orchestrator(
        {"settings": {"file_ttl": 600}, "models": models},
        extra_env={"MODELYARD_ENVS_DIR": str(python.parent.parent.parent)},
    )


def generate(orch: Any, model: str = "tiny-musicgen", **fields: Any) -> Any:
    with orch.client(timeout=300) as client:
        return client.post("/v1/audio/generations", json={"model": model, "prompt": "calm piano", **fields})


@pytest.mark.parametrize(("model", "channels"), [("tiny-musicgen", 1), ("tiny-musicgen-stereo", 2)])
def test_the_body_is_a_wav_of_the_requested_duration(orch, model, channels):
    response = generate(orch, model, duration=1.23, seed=1)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    got_channels, rate, frames, pcm = read_wav(response.content)
    assert (got_channels, rate, frames) == (channels, SAMPLE_RATE, round(1.23 * SAMPLE_RATE))
    samples = array.array("h", pcm)  # interleaved: frame by frame, each channel's sample
    tracks = [samples[channel::channels] for channel in range(channels)]
    for track in tracks:
        assert any(track[-SAMPLE_RATE // 100:])  # sound to the very end, not silence padded on
    if channels == 2:
        assert tracks[0] != tracks[1]  # two channels, not one written twice


def test_without_a_duration_the_engine_default_is_used(orch):
    response = generate(orch)
    assert response.status_code == 200, response.text
    assert read_wav(response.content)[2] == SAMPLE_RATE // 2


def test_b64_json_and_signed_urls_carry_the_same_wav(orch):
    inline = generate(orch, duration=0.25, seed=5, response_format="b64_json")
    assert inline.status_code == 200, inline.text
    item = inline.json()["data"][0]
    assert {k: item[k] for k in ("duration", "sample_rate", "channels", "format")} == {
        "duration": 0.25, "sample_rate": SAMPLE_RATE, "channels": 1, "format": "wav"}
    wav = base64.b64decode(item["b64_json"])
    assert read_wav(wav)[2] == SAMPLE_RATE // 4

    linked = generate(orch, duration=0.25, seed=5, response_format="url")
    assert linked.status_code == 200, linked.text
    url = linked.json()["data"][0]["url"]
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == orch.url and parsed.path.startswith("/files/audio/")
    with orch.client() as client:
        fetched = client.get(url)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "audio/wav"
        assert fetched.content == wav  # same seed, same audio
        assert client.get(parsed.path).status_code == 400  # no signature


def test_the_same_seed_gives_the_same_audio(orch):
    def audio(seed: int) -> bytes:
        response = generate(orch, duration=0.5, seed=seed)
        assert response.status_code == 200, response.text
        return response.content

    assert audio(11) == audio(11)
    assert audio(11) != audio(12)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"duration": 5}, "over this model's limit of 4 s"),
        ({"duration": 0}, "duration"),
        ({"duration": "long"}, "duration"),
        ({"format": "mp3"}, "format"),
        ({"response_format": "ogg"}, "response_format"),
        ({"prompt": ""}, "prompt"),
        ({"stream": True}, "does not stream"),
    ],
)
def test_bad_requests_are_400s_that_name_the_problem(orch, fields, fragment):
    response = generate(orch, **fields)
    assert response.status_code == 400, response.text
    assert fragment in response.text


def test_an_audio_model_is_not_reachable_on_other_routes(orch):
    with orch.client() as client:
        response = client.post("/v1/chat/completions",
                               json={"model": "tiny-musicgen", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_model_type"
