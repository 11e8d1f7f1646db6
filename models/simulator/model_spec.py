"""What the simulator knows of a model: its shape, read from a local Hugging
Face config.json (never the hub), through the same reader as the
orchestrator's memory estimate (core/memory_estimate.py).

Llama-style decoders (Llama, Mistral, Qwen, SmolLM, Mixtral and Qwen-MoE
experts) are what the formulas describe; a config without the fields they
need is refused with the field named, not guessed at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.memory_estimate import DTYPE_BYTES, DTYPES, QUANT_BYTES, config_quantization, model_shape, parameter_count

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads")
MAX_CONFIG_BYTES = 4 * 1024**2
MAX_DIMENSION = 10**8  # no real layer count, width or vocabulary comes near; beyond it the arithmetic overflows


class ModelConfigError(ValueError):
    """config.json is missing, unreadable or not a decoder this understands."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: int  # every weight, all experts
    active_params: int  # the weights one token goes through (MoE: its experts only)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    experts: int
    experts_per_token: int
    max_positions: int
    dtype: str  # float16 | bfloat16 | float32: the checkpoint's
    quantization: str | None  # the checkpoint's own (awq, gptq, int8, fp8 ...), None for a float one

    def bytes_per_param(self, quantization: str | None = None, dtype: str | None = None) -> float:
        """What one weight takes in memory when served with this quantization (or the checkpoint's)."""
        method = quantization or self.quantization
        return QUANT_BYTES[method] if method else DTYPE_BYTES[dtype or self.dtype]

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """K and V of one token over every layer, all KV heads: the cache grows by this per token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype or self.dtype]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model_spec(path: str | Path, name: str | None = None) -> ModelSpec:
    """The spec of the model whose config.json is at path (the file or its directory)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    # Only a file named config.json, and only a small one: the path may come from a client, and
    # neither another file's content nor a multi-gigabyte checkpoint may be read through it.
    if file.name != "config.json" or not file.is_file():
        raise ModelConfigError(f"no config.json at {file}: the simulator reads the model's shape from a local "
                               "Hugging Face config.json (download the model first; the hub is never asked)")
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelConfigError(f"{file} is larger than {MAX_CONFIG_BYTES // 1024**2} MB: not a model's "
                                   "config.json")
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ModelConfigError):
            raise
        raise ModelConfigError(f"{file} is not readable JSON ({type(exc).__name__})") from None
    return spec_from_config(config, name or file.parent.name)


def spec_from_config(config: Any, name: str) -> ModelSpec:
    """The spec from config.json's content; ModelConfigError naming the field when it cannot be one."""
    if not isinstance(config, dict):
        raise ModelConfigError(f"{name}: config.json must be a JSON object")
    if config.get("is_encoder_decoder"):
        raise ModelConfigError(f"{name}: encoder-decoder models are not simulated (decoder-only LLMs are)")
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}  # multimodal: the language model's shape
    shape = model_shape(config)
    if shape is None:
        for field in (*REQUIRED, "num_key_value_heads", "head_dim"):
            value = config.get(field)
            if (field in REQUIRED and value is None) or (value is not None and not _positive_int(value)):
                # numbers as they are; of text only its kind: the file may not be what it claims to be
                got = repr(value) if value is None or isinstance(value, (int, float)) \
                    else f"a {type(value).__name__}"
                raise ModelConfigError(f"{name}: config.json field {field!r} must be a positive integer, "
                                       f"got {got}")
        raise ModelConfigError(f"{name}: config.json does not describe a decoder the simulator understands")
    if any(value > MAX_DIMENSION for value in shape.values()):
        too_big = next(key for key, value in shape.items() if value > MAX_DIMENSION)
        raise ModelConfigError(f"{name}: config.json's {too_big} is larger than {MAX_DIMENSION}: not a real model")
    dtype = DTYPES.get(str(config.get("torch_dtype") or config.get("dtype") or ""), "bfloat16")
    return ModelSpec(
        name=name,
        params=parameter_count(config, shape),
        active_params=parameter_count(config, shape, active=True),
        layers=shape["layers"], hidden=shape["hidden"], heads=shape["heads"], kv_heads=shape["kv_heads"],
        head_dim=shape["head_dim"], vocab=shape["vocab"], intermediate=shape["intermediate"],
        experts=shape["experts"], experts_per_token=shape["experts_per_token"],
        max_positions=shape["max_positions"], dtype=dtype,
        quantization=config_quantization(config.get("quantization_config")),
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
