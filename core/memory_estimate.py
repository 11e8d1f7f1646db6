"""How much memory an LLM service will need, read from its Hugging Face model
directory before it is ever loaded (for models.yaml entries with no memory_gb).

weights + KV cache + overhead, each a rough but explainable figure:
- weights: the size of the weight files on disk (rescaled when the service
  loads them in another dtype); with no weight files, a Llama-style parameter
  count from config.json times bytes per parameter;
- KV cache: 2 (K and V) x layers x KV heads x head dim x tokens x sequences x
  bytes per element;
- overhead: CUDA context, allocator slack and activations, a rule of thumb.

"GB" means GiB here, as in core.gpu, so estimates compare with GPU totals.
Bad or unknown files give None (the caller falls back); only bad arguments raise.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.gpu import GIB

# Every spelling engines accept, to one name.
DTYPES = {
    **dict.fromkeys(("float16", "half", "fp16"), "float16"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float32", "float", "fp32"), "float32"),
}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
# Bytes per parameter: 4-bit packs two weights a byte, plus ~5% for scales and zeros.
QUANT_BYTES = {"awq": 0.525, "gptq": 0.525, "int4": 0.525, "bitsandbytes": 0.525, "int8": 1.0, "fp8": 1.0}
DEFAULT_CONTEXT = 4096  # services rarely run at the model's full window; callers pass the real one
MAX_HEADER = 100 * 1024 * 1024  # a safetensors header bigger than this is garbage, not metadata
# model_types whose transformers config ties the lm_head to the embeddings when config.json is silent
TIED_BY_DEFAULT = frozenset(("gemma", "gemma2", "gemma3", "gemma3_text"))


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    detail: str

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.overhead_gb


def estimate_memory(
    model_dir: str | Path,
    *,
    dtype: str | None = None,
    context_tokens: int | None = None,
    sequences: int = 1,
    quantization: str | None = None,
) -> MemoryEstimate | None:
    """The estimate for the model in model_dir, or None when its config.json is
    missing, unreadable or not a decoder LLM config this understands.

    quantization only counts when there are no weight files: files already have
    their quantized size (a float checkpoint quantized while loading is
    overestimated, the safe side)."""
    if dtype is not None and dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    if quantization is not None and quantization not in QUANT_BYTES:
        raise ValueError(f"unknown quantization {quantization!r}; expected one of {', '.join(QUANT_BYTES)}")
    if sequences < 1 or (context_tokens is not None and context_tokens < 1):
        raise ValueError("context_tokens and sequences must be at least 1")
    model_dir = Path(model_dir)
    config = read_config(model_dir / "config.json")
    if config is None or (shape := model_shape(config)) is None:
        return None

    config_dtype = DTYPES.get(str(config.get("torch_dtype") or config.get("dtype") or ""))
    dtype = DTYPES[dtype] if dtype not in (None, "auto") else config_dtype or "bfloat16"
    weights, weights_note = _weights_from_files(model_dir, dtype, config_dtype) or _weights_from_config(
        config, shape, dtype, quantization
    )

    tokens = context_tokens or min(shape["max_positions"] or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    kv = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * tokens * sequences * DTYPE_BYTES[dtype]
    # The CUDA context and allocator take ~0.5 GB whatever the model; activations
    # and workspace grow with it. A rough rule, not a measurement.
    overhead = 0.5 * GIB + 0.1 * weights
    return MemoryEstimate(
        weights_gb=weights / GIB,
        kv_cache_gb=kv / GIB,
        overhead_gb=overhead / GIB,
        detail=(
            f"weights {weights / GIB:.2f} GB ({weights_note}) + KV cache {kv / GIB:.2f} GB "
            f"({shape['layers']} layers x {shape['kv_heads']} KV heads x {shape['head_dim']} dims, "
            f"{tokens} tokens x {sequences} sequences, {dtype}) + overhead {overhead / GIB:.2f} GB"
        ),
    )


def read_config(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("is_encoder_decoder"):
        return None
    # Multimodal models keep the language model's shape in text_config.
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    return config


def model_shape(config: dict[str, Any]) -> dict[str, int] | None:
    """The numbers the formulas need, or None when the required ones are absent or not positive ints."""

    def number(key: str, default: int | None = None) -> int | None:
        value = config.get(key)
        if value is None:
            return default
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    hidden, layers, heads = number("hidden_size"), number("num_hidden_layers"), number("num_attention_heads")
    if not (hidden and layers and heads):
        return None
    head_dim = number("head_dim", hidden // heads)
    kv_heads = number("num_key_value_heads", heads)
    if not (head_dim and kv_heads):
        return None
    return {
        **{"hidden": hidden, "layers": layers, "heads": heads, "head_dim": head_dim, "kv_heads": kv_heads},
        "vocab": number("vocab_size") or 0,
        # Mixture-of-experts models: every expert's MLP is resident.
        "intermediate": number("moe_intermediate_size") or number("intermediate_size") or 4 * hidden,
        "experts": (experts := number("num_local_experts") or number("num_experts") or 1),
        "experts_per_token": min(number("num_experts_per_tok") or experts, experts),
        "max_positions": number("max_position_embeddings") or 0,
    }


def _weights_from_files(model_dir: Path, dtype: str, config_dtype: str | None) -> tuple[float, str] | None:
    """Bytes of the weight files, scaled to dtype; None when there are none or a header is unreadable."""
    # model*.safetensors covers model.safetensors and its shards; a consolidated.safetensors
    # beside them (Mistral's format) holds the same weights again.
    files = sorted(model_dir.glob("model*.safetensors")) or sorted(model_dir.glob("*.safetensors"))
    try:
        if files:
            kind, stored = "safetensors", _safetensors_dtype(files) or "quantized"
        elif files := sorted(model_dir.glob("pytorch_model*.bin")):
            # No header to read without torch: trust config.json's dtype.
            kind, stored = "pytorch .bin", config_dtype or dtype
        else:
            return None  # consolidated*.pth, GGUF...: left to the formula
        size = sum(f.stat().st_size for f in files)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
        return None  # a broken checkpoint: the parameter count is still a fair guess
    # Float checkpoints are cast to dtype on load; quantized ones load as they are.
    if stored in DTYPE_BYTES and stored != dtype:
        return size * DTYPE_BYTES[dtype] / DTYPE_BYTES[stored], f"{kind}, {stored} loaded as {dtype}"
    return size, f"{kind}, {stored}"


def _safetensors_dtype(files: list[Path]) -> str | None:
    """The dtype holding the most bytes in the files' headers (norms are often float32 beside
    bfloat16 weights): a DTYPE_BYTES key, or None for integer (quantized) storage."""
    totals: dict[str, int] = {}
    for path in files:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))  # 8-byte little-endian header length, then JSON
            if not 0 < length <= min(MAX_HEADER, path.stat().st_size - 8):
                raise ValueError(f"{path.name}: bad header length {length}")
            header = json.loads(f.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                start, end = tensor["data_offsets"]
                totals[tensor["dtype"]] = totals.get(tensor["dtype"], 0) + end - start
    if not totals:
        raise ValueError("no tensors")
    return SAFETENSORS_DTYPES.get(max(totals, key=totals.__getitem__))


def _weights_from_config(
    config: dict[str, Any], shape: dict[str, int], dtype: str, quantization: str | None
) -> tuple[float, str]:
    """Llama-style parameter count times bytes per parameter."""
    params = parameter_count(config, shape)
    method = quantization or config_quantization(config.get("quantization_config"))
    per_param = QUANT_BYTES[method] if method else DTYPE_BYTES[dtype]
    return params * per_param, f"{params / 1e9:.3g}B params from config.json, {method or dtype}"


def parameter_count(config: dict[str, Any], shape: dict[str, int], *, active: bool = False) -> int:
    """Llama-style parameter count (Mistral, Qwen, Mixtral and the like share the
    shape). active=True counts only the experts a token goes through (MoE)."""
    hidden, q_dim, kv_dim = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    attention = 2 * hidden * q_dim + 2 * hidden * kv_dim  # q and o, k and v projections
    experts = shape["experts_per_token"] if active else shape["experts"]
    mlp = experts * 3 * hidden * shape["intermediate"]  # gate, up, down (per expert)
    router = hidden * shape["experts"] if shape["experts"] > 1 else 0
    # Unsaid, tie_word_embeddings takes its transformers default: tied for Gemma, untied for
    # Llama and most others (counting the lm_head when unsure errs on the safe side).
    tied = config.get("tie_word_embeddings")
    if tied is None:
        tied = config.get("model_type") in TIED_BY_DEFAULT
    embeddings = shape["vocab"] * hidden * (1 if tied else 2)
    return embeddings + shape["layers"] * (attention + mlp + router + 2 * hidden) + hidden  # + RMSNorm weights


def config_quantization(qc: Any) -> str | None:
    """A QUANT_BYTES key for config.json's quantization_config, or None for none / unknown."""
    if not isinstance(qc, dict):
        return None
    method, bits = str(qc.get("quant_method", "")).lower(), qc.get("bits")
    if qc.get("load_in_4bit") or bits == 4 or (method in ("awq", "gptq") and bits is None):
        return method if method in ("awq", "gptq") else "int4"
    if qc.get("load_in_8bit") or bits == 8 or method == "fp8":
        return "fp8" if method == "fp8" else "int8"
    return None
