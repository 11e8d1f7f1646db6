"""models.yaml: shipped files are valid, and a broken file stops start-up with
the file, the model id, the field and the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, json_schema, load_config
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["models.yaml", "models.example.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "configs" / name)
    assert config.models


def test_committed_json_schema_matches_the_models():
    committed = json.loads((ROOT / "configs" / "models.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: python -m core.config --schema > configs/models.schema.json"


BROKEN = [
    ("models:\n  m:\n    engine: command\n    cmd: 'x --port ${PORT}'\n    memory_gb: lots\n",
     ["model 'm'", "field 'memory_gb'", "valid number", "'lots'"]),
    ("models:\n  m:\n    engine: command\n    cmd: 'server --port 8000'\n",
     ["model 'm'", "must contain ${PORT}"]),
    ("models:\n  m:\n    engine: vllmm\n",
     ["model 'm'", "field 'engine'", "'vllm', 'transformers', 'embeddings', 'onnx', 'diffusers', 'musicgen' or 'command'"]),
    ("models:\n  m:\n    engine: transformers\n", ["model 'm'", "needs `model`"]),
    ("models:\n  m:\n    engine: diffusers\n    model: /m\n", ["model 'm'", "set `type: image`"]),
    ("models:\n  m:\n    engine: musicgen\n    type: image\n    model: /m\n",
     ["model 'm'", "does not serve type 'image'", "set `type: audio`"]),
    ("models:\n  m:\n    engine: onnx\n    type: text\n    model: /m\n",
     ["model 'm'", "set `type: embedding` or `type: classification`"]),
    ("models:\n  m:\n    engine: vllm\n    model: /m\n    served_name: other\n",
     ["model 'm'", "`served_name` is only for engine 'command'"]),
    ("models:\n  m:\n    engine: vllm\n    model: /m\n    sleep: {wake_path: wake_up}\n",
     ["model 'm'", "wake_path", "must start with '/'"]),
    ("models:\n  m:\n    engine: command\n    cmd: 'x ${PORT}'\n    ttll: 5\n", ["model 'm'", "field 'ttll'", "Extra inputs"]),
    ("models:\n  m:\n    engine: command\n    cmd: 'x ${PORT} ${NOPE_NOT_SET}'\n", ["model 'm'", "${NOPE_NOT_SET}"]),
    ("models:\n  a:\n    engine: command\n    cmd: 'x ${PORT}'\n  b:\n    engine: command\n    cmd: 'x ${PORT}'\n    aliases: [a]\n",
     ["alias 'a' is already the name of model 'a'"]),
    ("models:\n  m:\n    engine: command\n    cmd: 'x ${PORT}'\n    startup_timeout: -1\n", ["field 'startup_timeout'", "greater than 0"]),
    ("settings:\n  port: 70000\n", ["field 'settings.port'", "less than or equal to 65535"]),
    ("models:\n  m: [\n", ["line 3", "invalid YAML"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
]


@pytest.mark.parametrize(("text", "fragments"), BROKEN)
def test_broken_config_names_file_model_field_and_reason(tmp_path: Path, text, fragments):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path) + ": ")
    for fragment in fragments:
        assert fragment in message


def test_sleep_endpoints_default_to_the_engines_own(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  v: {engine: vllm, model: /m, sleep: {}}\n"
        "  t: {engine: transformers, model: /m, sleep: {}}\n"
        "  c: {engine: command, cmd: 'x ${PORT}', sleep: {sleep_path: /pause, wake_path: /resume}}\n"
    )
    models = load_config(path).models
    assert (models["v"].sleep.sleep_path, models["v"].sleep.wake_path) == ("/sleep?level=1", "/wake_up")
    assert (models["t"].sleep.sleep_path, models["t"].sleep.wake_path) == ("/sleep", "/wake")
    assert (models["c"].sleep.sleep_path, models["c"].sleep.wake_path) == ("/pause", "/resume")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config("/nonexistent/models.yaml")


def test_orchestrator_refuses_to_start_on_a_broken_config(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  m:\n    engine: command\n    cmd: 'x --port 1'\n")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{path}: model 'm': `cmd` must contain ${{PORT}}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_command_line_arguments_are_usage_errors(tmp_path: Path):
    for args in (["--port", "notaport"], ["--port", "0"], ["--bogus"]):
        result = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
