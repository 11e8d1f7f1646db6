"""Model groups with llama-swap's rules (swap, exclusive, persistent), on top
of memory-based placement: in-process, real service processes, the invariant
checker watching every state change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import ConfigError, load_config
from orchestrator.scheduler import State
from tests.support.inprocess import serve_in_process

FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"
BIG_GPU = {"gpus": [{"name": "sim", "memory_gb": 80}], "gpu_reserve_gb": 0}


def model(**fields: Any) -> dict[str, Any]:
    return {"engine": "command", "cmd": FAKE, "memory_gb": 8, **fields}


def states(harness) -> dict[str, str]:
    return {m: s.state.value for m, s in harness.scheduler.services.items()}


async def test_a_swap_group_runs_one_member_at_a_time_though_memory_would_fit(tmp_path):
    config = {
        "settings": BIG_GPU,
        "models": {"a": model(), "b": model(), "free": model()},
        "groups": {"pair": {"members": ["a", "b"], "swap": True}},
    }
    async with serve_in_process(config, tmp_path) as harness:
        for name in ("a", "free", "b"):
            assert (await harness.chat(name))[0] == 200
        assert states(harness) == {"a": "stopped", "b": "ready", "free": "ready"}
        assert not harness.checker.violations


async def test_an_exclusive_group_clears_the_others_but_not_persistent_ones(tmp_path):
    config = {
        "settings": BIG_GPU,
        "models": {"solo": model(), "loose": model(), "kept": model(), "pin": model(pinned=True)},
        "groups": {
            "alone": {"members": ["solo"], "exclusive": True},
            "keep": {"members": ["kept"], "persistent": True},
        },
    }
    async with serve_in_process(config, tmp_path) as harness:
        for name in ("loose", "kept", "pin", "solo"):
            assert (await harness.chat(name))[0] == 200
        assert states(harness) == {"solo": "ready", "loose": "stopped", "kept": "ready", "pin": "ready"}
        assert not harness.checker.violations


async def test_a_busy_group_member_is_waited_for_not_cut(tmp_path):
    import asyncio

    config = {
        "settings": BIG_GPU,
        "models": {"a": model(), "b": model()},
        "groups": {"pair": {"members": ["a", "b"]}},  # swap is the default
    }
    async with serve_in_process(config, tmp_path) as harness:
        slow = asyncio.create_task(harness.chat("a", delay_ms=800))
        await asyncio.sleep(0.5)
        status_b, _ = await harness.chat("b")
        assert (await slow)[0] == 200 and status_b == 200
        assert harness.scheduler.services["a"].state is State.STOPPED
        assert not harness.checker.violations


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ({"g": {"members": ["ghost"]}}, "group 'g': member 'ghost' is not a model in `models`"),
        ({"g": {"members": ["a"]}, "h": {"members": ["a"]}}, "group 'h': model 'a' is already in group 'g'"),
        ({"g": {"members": []}}, "field 'groups.g.members'"),
    ],
)
def test_bad_groups_are_config_errors(tmp_path: Path, groups, fragment):
    import yaml

    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"a": model()}, "groups": groups}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert fragment in str(caught.value)
