"""Convert a sentence-transformers encoder to ONNX (and TensorRT where it can
run), checked against PyTorch before anything is kept.

    python models/onnx/convert.py --model DIR --out DIR [--opset 17]
        [--tolerance 1e-4] [--tensorrt auto|require|off] [--trt-tolerance 1e-2]

What it writes to --out (all or nothing; a failed check leaves nothing):
  model.onnx           the encoder with its pooling and normalization inside the
                       graph, so the output is the sentence embedding itself;
                       dynamic batch and sequence axes
  tokenizer.json ...   the tokenizer (save_pretrained), for the server (no torch there)
  modelyard-onnx.json  the manifest: dimension, context length, the checks run
                       and their figures, and the TensorRT outcome
  trt-cache/           the TensorRT FP16 engine, built by ONNX Runtime's TensorRT
                       provider (only where TensorRT and an NVIDIA GPU exist)

Every artefact is compared with PyTorch's output on the same texts (batches of
uneven lengths, so padding is exercised); a largest absolute difference over
the tolerance refuses it. FP16 TensorRT gets its own, looser tolerance.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModel, AutoTokenizer

MANIFEST = "modelyard-onnx.json"
# Texts of very different lengths in one batch: padding must not change a vector.
CHECK_TEXTS = [
    "hello",
    "A cat sits on the mat.",
    "The orchestrator packs models onto GPUs and swaps them when requests arrive for another one.",
    "Ünïcödé, emoji 🚀 and numbers 12345 are tokenized too.",
    " ".join(["long"] * 200),
]


class ConversionError(Exception):
    """The model cannot be converted, or a converted artefact failed its check."""


class SentenceEncoder(torch.nn.Module):
    """The transformer, then sentence-transformers' pooling (and Normalize)."""

    def __init__(self, transformer: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *token_type_ids: torch.Tensor) -> Any:
        # Keyword arguments: transformers 5's forward signatures reject these positionally (ENVIRONMENT.md).
        extra = {"token_type_ids": token_type_ids[0]} if token_type_ids else {}
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
        else:  # cls
            pooled = hidden[:, 0]
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled


def read_sentence_transformers(model_dir: Path) -> tuple[str, bool, int]:
    """(pooling, normalize, max_tokens) from the model directory's modules.json."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise ConversionError(f"{model_dir} is not a sentence-transformers model directory (no modules.json)")
    modules = json.loads(modules_file.read_text())
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling = "cls"
    pooling_module = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pooling_module is not None:
        config = json.loads((model_dir / pooling_module["path"] / "config.json").read_text())
        modes = [name for name in ("cls", "mean", "max") if config.get(f"pooling_mode_{name}_token")
                 or config.get(f"pooling_mode_{name}_tokens")]
        others = [key for key, on in config.items() if key.startswith("pooling_mode_") and on
                  and key not in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")]
        if len(modes) != 1 or others:
            raise ConversionError(f"pooling {config} is not supported (one of cls, mean or max)")
        pooling = modes[0]
    unknown = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise ConversionError(f"modules {unknown} are not supported (Transformer, Pooling, Normalize only)")
    settings_file = model_dir / "sentence_bert_config.json"
    max_tokens = json.loads(settings_file.read_text()).get("max_seq_length", 512) if settings_file.is_file() else 512
    return pooling, "Normalize" in types, int(max_tokens)


def model_inputs(tokenizer: Any, transformer: torch.nn.Module) -> list[str]:
    """The graph's inputs: token_type_ids only for models that take them (BERT
    does; MPNet, DistilBERT and ModernBERT do not)."""
    accepted = inspect.signature(transformer.forward).parameters
    wants_types = "token_type_ids" in accepted and "token_type_ids" in tokenizer.model_input_names
    return ["input_ids", "attention_mask", *(["token_type_ids"] if wants_types else [])]


def tokenize(tokenizer: Any, texts: list[str], max_tokens: int, inputs: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="np")
    if "token_type_ids" in inputs and "token_type_ids" not in encoded:
        encoded["token_type_ids"] = np.zeros_like(encoded["input_ids"])
    return {name: encoded[name].astype(np.int64) for name in inputs}


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Feed only what the graph takes (an exporter may drop an unused input)."""
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {name: value for name, value in feeds.items() if name in names})[0]


def compare(label: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The check's figures; ConversionError when the artefact is off."""
    diff = float(np.max(np.abs(got - want)))
    cosines = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    figures = {"max_abs_diff": diff, "min_cosine": float(np.min(cosines)), "tolerance": tolerance,
               "texts": int(got.shape[0])}
    if not diff <= tolerance:  # also refuses NaN
        raise ConversionError(f"{label} output differs from PyTorch by {diff:.3g} (tolerance {tolerance:g}): refused")
    print(f"modelyard: {label} matches PyTorch: max abs diff {diff:.2e}, min cosine {figures['min_cosine']:.6f}")
    return figures


def tensorrt_absent_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime here has no TensorRT provider (it has {', '.join(ort.get_available_providers())})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def build_tensorrt(onnx_path: Path, cache: Path, feeds: dict[str, np.ndarray], want: np.ndarray,
                   tolerance: float) -> dict[str, Any]:
    """Build and check the FP16 TensorRT engine through ONNX Runtime's TensorRT
    provider; it is cached in `cache` for the server to reuse."""
    cache.mkdir(parents=True, exist_ok=True)
    options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    session = ort.InferenceSession(str(onnx_path), providers=[("TensorrtExecutionProvider", options)])
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        raise ConversionError(f"TensorRT provider did not take the model (got {session.get_providers()})")
    began = time.monotonic()
    got = run_session(session, feeds)
    figures = compare("TensorRT FP16 engine", got, want, tolerance)
    return {"built": True, "seconds": round(time.monotonic() - began, 2), "check": figures}


def convert(model_dir: Path, out: Path, opset: int, tolerance: float, tensorrt: str, trt_tolerance: float) -> dict:
    pooling, normalize, max_tokens = read_sentence_transformers(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    transformer = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoder = SentenceEncoder(transformer, pooling, normalize).eval()
    inputs = model_inputs(tokenizer, transformer)
    feeds = tokenize(tokenizer, CHECK_TEXTS, max_tokens, inputs)
    with torch.inference_mode():
        want = encoder(*(torch.from_numpy(feeds[name]) for name in inputs)).numpy()
    # Traced with other shapes (batch and length) than the check uses, so a
    # graph that froze either axis fails the check.
    sample = tokenize(tokenizer, CHECK_TEXTS[1:3], max_tokens, inputs)

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        onnx_path = work / "model.onnx"
        began = time.monotonic()
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(
            encoder, tuple(torch.from_numpy(sample[name]) for name in inputs), str(onnx_path), opset_version=opset,
            dynamo=False, input_names=inputs, output_names=["sentence_embedding"],
            dynamic_axes={**{name: axes for name in inputs}, "sentence_embedding": {0: "batch"}},
        )
        export_seconds = round(time.monotonic() - began, 2)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        check = compare("ONNX Runtime (CPU)", run_session(session, feeds), want, tolerance)
        check["single_text"] = compare(
            "ONNX Runtime (CPU), one short text", run_session(session, {k: v[:1] for k, v in sample.items()}),
            encoder(*(torch.from_numpy(sample[name][:1]) for name in inputs)).detach().numpy(), tolerance,
        )["max_abs_diff"]

        trt: dict[str, Any] = {"built": False}
        reason = tensorrt_absent_reason() if tensorrt != "off" else "not asked for (--tensorrt off)"
        if reason is None:
            trt = build_tensorrt(onnx_path, work / "trt-cache", feeds, want, trt_tolerance)
        elif tensorrt == "require":
            raise ConversionError(f"TensorRT was required but cannot run here: {reason}")
        else:
            trt["reason"] = reason
            print(f"modelyard: TensorRT engine not built: {reason}")

        tokenizer.save_pretrained(work)
        if not (work / "tokenizer.json").is_file():
            raise ConversionError("the model has no fast tokenizer (tokenizer.json), which the server needs")
        manifest = {
            "task": "embedding",
            "source": str(model_dir.resolve()),
            "dimension": int(want.shape[1]),
            "max_tokens": max_tokens,
            "pooling": pooling,
            "normalized": normalize,
            "inputs": [i.name for i in session.get_inputs()],
            "pad_token": tokenizer.pad_token,
            "opset": opset,
            "export_seconds": export_seconds,
            "check": check,
            "tensorrt": trt,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # a refused or broken conversion leaves nothing behind
        raise
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a sentence-transformers encoder to ONNX (and TensorRT).")
    parser.add_argument("--model", required=True, type=Path, help="sentence-transformers model directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced when the check passes)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference from PyTorch")
    parser.add_argument("--tensorrt", choices=["auto", "require", "off"], default="auto",
                        help="auto: build the FP16 engine where TensorRT and a GPU exist; require: fail otherwise")
    parser.add_argument("--trt-tolerance", type=float, default=1e-2, help="the same check for the FP16 engine")
    args = parser.parse_args(argv)
    try:
        manifest = convert(args.model, args.out, args.opset, args.tolerance, args.tensorrt, args.trt_tolerance)
    except ConversionError as exc:
        print(f"modelyard: conversion failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a model the exporter or runtime cannot take: say so in one line
        print(f"modelyard: conversion failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"modelyard: wrote {args.out} ({manifest['dimension']} dimensions, opset {manifest['opset']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
