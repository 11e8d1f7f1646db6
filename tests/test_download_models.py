"""scripts/download-models.sh: the weights of models that name a `source` are
fetched from the Hub into their `model` directory with huggingface_hub (from
an engine environment), skipped when already there, and a missing network or
a wrong repository is said plainly. The Hub is a local stand-in
(tests/support/fake_hub.py); everything else is the real script."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.fake_hub import FakeHub

ENVS = Path(os.environ.get("MODELYARD_ENVS_DIR", ROOT / "state" / "envs"))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    repo = tmp_path / "hub" / "tiny"
    (repo / "tokenizer").mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "llama"}')
    (repo / "model.safetensors").write_bytes(os.urandom(200_000))
    (repo / "tokenizer" / "tokenizer.json").write_text("{}")
    fake = FakeHub({"org/tiny": repo})
    fake.start()
    yield fake
    fake.stop()


def run(tmp_path: Path, models: dict[str, Any], *args: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    env = {
        **os.environ,
        "MODELYARD_STATE_DIR": str(tmp_path / "state"),
        "MODELYARD_ENVS_DIR": str(ENVS),
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "download-models.sh"), "--config", str(config), *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def vllm_model(source: str | None, directory: str) -> dict[str, Any]:
    model: dict[str, Any] = {"engine": "vllm", "model": directory}
    if source:
        model["source"] = source
    return model


def test_weights_are_fetched_into_the_model_directory_once(tmp_path, hub):
    models = {
        "tiny": vllm_model("org/tiny", "${STATE_DIR}/models/tiny"),
        "pinned": vllm_model("org/tiny@main", str(tmp_path / "elsewhere" / "tiny-main")),
        "local": vllm_model(None, "/models/whatever"),  # no source: not touched
    }
    result = run(tmp_path, models, endpoint=hub.url)
    assert result.returncode == 0, result.stderr
    source = hub.repos["org/tiny"]
    for target in (tmp_path / "state" / "models" / "tiny", tmp_path / "elsewhere" / "tiny-main"):
        for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.json"):
            assert (target / name).read_bytes() == (source / name).read_bytes()
        assert not target.with_name(target.name + ".partial").exists()
    assert "/models/whatever" not in result.stderr

    fetched = len(hub.requests)
    again = run(tmp_path, models, endpoint=hub.url)
    assert again.returncode == 0 and again.stderr.count("is already there") == 2
    assert len(hub.requests) == fetched  # nothing asked of the Hub


def test_only_the_named_models_are_fetched(tmp_path, hub):
    models = {"a": vllm_model("org/tiny", str(tmp_path / "a")), "b": vllm_model("org/tiny", str(tmp_path / "b"))}
    assert run(tmp_path, models, "--model", "b", endpoint=hub.url).returncode == 0
    assert (tmp_path / "b" / "config.json").exists() and not (tmp_path / "a").exists()
    unknown = run(tmp_path, models, "--model", "c", endpoint=hub.url)
    assert unknown.returncode == 1 and "no such model" in unknown.stderr and "c" in unknown.stderr


def test_a_repository_that_does_not_exist_fails_that_model_only(tmp_path, hub):
    models = {
        "missing": vllm_model("org/missing", str(tmp_path / "missing")),
        "tiny": vllm_model("org/tiny", str(tmp_path / "tiny")),
    }
    result = run(tmp_path, models, endpoint=hub.url)
    assert result.returncode == 1
    assert "org/missing: no such repository" in result.stderr
    assert (tmp_path / "tiny" / "config.json").exists()
    assert not (tmp_path / "missing").exists()


def test_without_a_network_it_says_so_and_writes_nothing(tmp_path):
    models = {"tiny": vllm_model("org/tiny", str(tmp_path / "tiny"))}
    result = run(tmp_path, models, endpoint="http://127.0.0.1:9")  # nothing listens on port 9
    assert result.returncode == 2
    assert "cannot reach http://127.0.0.1:9" in result.stderr and "no network" in result.stderr
    assert f"Copy the model's files into {tmp_path / 'tiny'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tiny").exists()


def test_a_config_without_sources_has_nothing_to_do(tmp_path):
    result = run(tmp_path, {"m": vllm_model(None, "/models/m")}, endpoint="http://127.0.0.1:9")
    assert result.returncode == 0 and "nothing to download" in result.stderr


def test_a_bad_source_is_a_config_error_naming_the_field(tmp_path):
    result = run(tmp_path, {"m": vllm_model("not a repo", "/models/m")}, endpoint="http://127.0.0.1:9")
    assert result.returncode == 1
    assert "model 'm', field 'source'" in result.stderr and "org/name" in result.stderr
