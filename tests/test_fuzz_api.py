"""Schemathesis fuzzing of every public route of the orchestrator's OpenAPI
schema (the OpenAI routes, /v1/models, admin, keys, files, health) against a
real orchestrator serving fake services: whatever the generated input, valid
or not, no answer is a 5xx and no body carries a traceback.

The orchestrator runs with auth on and an admin key, so the routes behind
auth are exercised past it; the fake models answer at once. Each route gets
20 inputs its schema allows and 20 it does not; the model names are now and
then replaced by real ones, so the inputs reach the models' own checks. A
reload, an unload and maintenance are left out: they change the server for
every input after them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import ROOT, fake_model


@pytest.fixture(scope="module")
def target(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    made = subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(state), "--json",
                           "create", "--name", "fuzzer", "--role", "admin"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    config = {
        "settings": {"auth": {"enabled": True}},
        "models": {"chat": fake_model(aliases=["gpt-fuzz"]), "emb": fake_model(type="embedding")},
    }
    orch = module_orchestrator(config, state_dir=state)
    return {"url": orch.url, "key": json.loads(made.stdout)["key"], "orch": orch}


def no_traceback(response: Any, case: Any) -> None:
    """No answer shows a Python traceback or an exception's repr."""
    text = response.content.decode(errors="replace")
    assert "Traceback (most recent call last)" not in text, f"traceback in {case.method} {case.path}"


# These change the whole server for the examples after them (a reload, an
# unload, maintenance): their inputs are checked by their own tests.
SKIPPED = ("POST /admin/reload", "POST /admin/services/{model_id}/unload", "POST /admin/maintenance")


MODEL_NAMES = st.sampled_from([None, "chat", "gpt-fuzz", "emb"])  # None: leave what was generated


def fuzz_operation(operation: Any, mode: GenerationMode, target: dict[str, Any], seen: Counter[int]) -> None:
    """20 inputs of this mode for one operation; AssertionError for a 5xx or a traceback."""
    headers = {"Authorization": f"Bearer {target['key']}"}

    @given(case=operation.as_strategy(generation_mode=mode), model=MODEL_NAMES)
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def fuzz(case: Any, model: str | None) -> None:
        # Names that exist, now and then: past the 404 into the model's own handling.
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        if model is not None and case.path_parameters and "model_id" in case.path_parameters:
            case.path_parameters["model_id"] = model
        response = case.call(base_url=target["url"], headers=headers)
        seen[response.status_code] += 1
        assert response.status_code < 500, f"{response.status_code} {response.text[:300]}"
        no_traceback(response, case)

    fuzz()


def test_no_input_gets_a_server_error_or_a_traceback(target: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(target["url"] + "/openapi.json")
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIPPED:
            continue
        for mode in GenerationMode:  # inputs the schema allows, and inputs it does not
            try:
                fuzz_operation(operation, mode, target, statuses.setdefault(operation.label, Counter()))
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong (no inputs)
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert len(statuses) >= 20, list(statuses)  # every route was there to fuzz
    assert not failures, "\n".join(failures)
    # The fuzzing reached past validation into the models' handling.
    answered = statuses["POST /v1/chat/completions"][200] + statuses["POST /v1/embeddings"][200]
    assert answered > 0, statuses
    print("\n".join(f"{label}: {dict(codes)}" for label, codes in statuses.items()))
