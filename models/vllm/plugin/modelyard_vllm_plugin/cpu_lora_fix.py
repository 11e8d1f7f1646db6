"""Base-model requests stay the base model's on vLLM's CPU build with LoRA on.

vLLM marks tokens that use no adapter with the LoRA index -1. The CUDA (Triton)
kernels skip them; the PyTorch ops that the CPU build uses
(vllm/lora/ops/torch_ops/lora_ops.py, 0.32.0) index the stacked adapter
weights with it, and -1 is Python's last element: a base-model request batched
with, or served after, an adapter's gets that adapter's delta. Seen here: the
base SmolLM2 answered "L'Étoile, la Marseillaise," with --enable-lora instead
of "The capital of France is Paris." (../shared/ENVIRONMENT.md). Upstream:
vllm-project/vllm pull request #48421, open when this was written.

The fix wraps the three bgmv ops (the sgmv ones call them): rows whose index
is -1 get zero input and index 0, so their delta is exactly zero, which is
what the CUDA kernels' early exit amounts to. Rows with an adapter are
computed as before (their input times one). A call whose input rows do not
match its indices one to one is left as it was. Loaded by vLLM in each of its processes (general plugin,
see ../pyproject.toml); applying it twice is harmless.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

# A child of "vllm": its lines appear in the service log with vLLM's own.
log = logging.getLogger("vllm.modelyard_plugin")

OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
# Modules that hold their own reference to the ops (from ... import ...).
HOLDERS = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)
_MARK = "_modelyard_skips_unadapted_rows"


def skip_unadapted_rows(op: Callable[..., Any]) -> Callable[..., Any]:
    """op(inputs, weights, output, indices, ...) with index -1 rows contributing nothing."""
    if getattr(op, _MARK, False):
        return op

    @functools.wraps(op)
    def wrapper(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        # No branch on the values (torch.compile needs a static graph): rows
        # with an adapter are multiplied by one, the others by zero.
        if inputs.shape[0] == indices.shape[0]:
            inputs = inputs * (indices >= 0).unsqueeze(-1).to(inputs.dtype)
            indices = indices.clamp(min=0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def apply() -> list[str]:
    """Patch every holder of the ops; returns the names patched."""
    import importlib

    lora_ops = importlib.import_module(HOLDERS[0])
    fixed = {name: skip_unadapted_rows(getattr(lora_ops, name)) for name in OPS}
    patched = []
    for holder_name in HOLDERS:
        try:
            holder = sys.modules.get(holder_name) or importlib.import_module(holder_name)
        except ImportError:  # a vLLM without this module has nothing of it to fix
            continue
        for name, op in fixed.items():
            if hasattr(holder, name):
                setattr(holder, name, op)
                patched.append(f"{holder_name}.{name}")
    return patched


def register() -> None:
    """vLLM's general-plugin hook (called in the API server, engine core and workers)."""
    try:
        patched = apply()
    except Exception as exc:  # noqa: BLE001 - vLLM must still start; the log says what failed
        log.warning("modelyard: could not apply the CPU LoRA fix: %s", exc)
        return
    log.info("modelyard: CPU LoRA fix applied to %d op references", len(patched))
