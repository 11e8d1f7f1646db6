"""Convert a model to ONNX (and TensorRT where it can run), checked against
PyTorch before anything is kept. Two tasks:

- embedding: a sentence-transformers encoder, with its pooling and
  normalization inside the graph (the output is the sentence embedding);
  dynamic batch and sequence axes; the tokenizer is saved for the server.
- image-classification: a transformers *ForImageClassification model, pixel
  values in and logits out, dynamic batch axis. Its image processor's steps
  (resize, crop, rescale, normalize) go into the manifest for the server,
  whose own preprocessing (image_inputs.py) must give the processor's pixels
  on images of several sizes, or the conversion is refused.

    python models/onnx/convert.py --model DIR --out DIR [--task auto|embedding|image-classification]
        [--opset 17] [--tolerance 1e-4] [--tensorrt auto|require|off] [--trt-tolerance 1e-2]

What it writes to --out (all or nothing; a failed check leaves nothing):
  model.onnx           the graph
  tokenizer.json ...   (embedding) the tokenizer, for the server (no torch there)
  modelyard-onnx.json  the manifest: the task's settings (dimension and context
                       length; or labels and preprocessing), the checks run
                       and their figures, and the TensorRT outcome
  trt-cache/           the TensorRT FP16 engine, built by ONNX Runtime's TensorRT
                       provider (only where TensorRT and an NVIDIA GPU exist)

Every artefact is compared with PyTorch's output on the same inputs (texts of
uneven lengths, so padding is exercised; images of several sizes, through the
server's preprocessing); a largest absolute difference over the tolerance
refuses it. FP16 TensorRT gets its own, looser tolerance.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoTokenizer

# isort: split
# models/onnx/, the script's own folder: the server's preprocessing and manifest.
from image_inputs import preprocess
from runtime import MANIFEST, TASKS

# Transformers' image processors resize and normalize in float32; ours must give the same pixels.
PREPROCESS_TOLERANCE = 1e-5

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
               "inputs": int(got.shape[0])}
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


@dataclass
class Exportable:
    """A model made ready for export by its task: what to trace, what to check."""

    module: torch.nn.Module
    sample: dict[str, np.ndarray]  # traced with these: other shapes than the check's
    axes: dict[str, dict[int, str]]  # dynamic axes of inputs and the output
    output: str
    feeds: dict[str, np.ndarray]  # the check's inputs, as the server will feed them
    want: np.ndarray  # PyTorch's answer to the check
    manifest: dict[str, Any]  # the task's own manifest fields
    checks: dict[str, Any]  # checks run before export (preprocessing)
    save_assets: Callable[[Path], None]  # what the server needs besides model.onnx


def prepare_encoder(model_dir: Path) -> Exportable:
    pooling, normalize, max_tokens = read_sentence_transformers(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    transformer = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoder = SentenceEncoder(transformer, pooling, normalize).eval()
    inputs = model_inputs(tokenizer, transformer)
    feeds = tokenize(tokenizer, CHECK_TEXTS, max_tokens, inputs)
    with torch.inference_mode():
        want = encoder(*(torch.from_numpy(feeds[name]) for name in inputs)).numpy()
    axes = {0: "batch", 1: "sequence"}

    def save_assets(work: Path) -> None:
        tokenizer.save_pretrained(work)
        if not (work / "tokenizer.json").is_file():
            raise ConversionError("the model has no fast tokenizer (tokenizer.json), which the server needs")

    return Exportable(
        module=encoder, sample=tokenize(tokenizer, CHECK_TEXTS[1:3], max_tokens, inputs),
        axes={**{name: axes for name in inputs}, "sentence_embedding": {0: "batch"}}, output="sentence_embedding",
        feeds=feeds, want=want, checks={}, save_assets=save_assets,
        manifest={"task": "embedding", "dimension": int(want.shape[1]), "max_tokens": max_tokens, "pooling": pooling,
                  "normalized": normalize, "pad_token": tokenizer.pad_token},
    )


def detect_task(model_dir: Path) -> str:
    """embedding for a sentence-transformers directory, image-classification
    for a transformers *ForImageClassification one."""
    if (model_dir / "modules.json").is_file():
        return "embedding"
    config_file = model_dir / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") or [] if config_file.is_file() else []
    if any(name.endswith("ForImageClassification") for name in architectures):
        return "image-classification"
    raise ConversionError(f"{model_dir} is neither a sentence-transformers model (modules.json) nor a transformers "
                          "image classifier (config.json architectures *ForImageClassification); "
                          f"name the task with --task ({' or '.join(TASKS)})")


class ImageLogits(torch.nn.Module):
    """An image classifier with pixel values in and logits out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.model(pixel_values=pixel_values).logits


def preprocess_spec(processor: Any) -> dict[str, Any]:
    """The image processor's steps in image_inputs.py's terms; ConversionError
    for steps it does not do (the check below catches anything subtler)."""
    settings = processor.to_dict()
    if settings.get("do_pad") or settings.get("do_reduce_labels"):
        raise ConversionError(f"image processor {settings.get('image_processor_type')}: padding is not supported")
    size = {key: value for key, value in (settings.get("size") or {}).items() if value is not None}
    crops = [settings["crop_size"]] if settings.get("do_center_crop") and settings.get("crop_size") else []
    resize = None
    if settings.get("do_resize", True):
        if "crop_pct" in settings and set(size) == {"shortest_edge"}:
            # ConvNeXT and ResNet: under 384, resize to edge/crop_pct and crop edge x edge (then any
            # centre crop of its own); from 384 on, warp to edge x edge.
            edge, crop_pct = size["shortest_edge"], settings.get("crop_pct") or 224 / 256
            if edge < 384:
                resize = {"shortest_edge": int(edge / crop_pct)}
                crops.insert(0, {"height": edge, "width": edge})
            else:
                resize = {"height": edge, "width": edge}
        elif set(size) in ({"height", "width"}, {"shortest_edge"}):
            resize = size
        else:
            raise ConversionError(f"image processor size {size} is not supported (height and width, or shortest_edge)")
    if (resize is None or "shortest_edge" in resize) and not crops:
        raise ConversionError("the image processor gives images of varying size (no fixed resize or crop)")
    normalize = settings.get("do_normalize", True)
    return {
        "processor": settings.get("image_processor_type"),
        "resize": resize,
        "resample": int(settings.get("resample") if settings.get("resample") is not None else 2),
        "crops": crops,
        "rescale": float(settings["rescale_factor"]) if settings.get("do_rescale", True) else None,
        "mean": per_channel(settings["image_mean"]) if normalize else None,
        "std": per_channel(settings["image_std"]) if normalize else None,
    }


def per_channel(value: float | list[float]) -> list[float]:
    """A mean or std for each of the three channels (processors may give one number)."""
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise ConversionError(f"image mean/std {value} does not have 3 channels")
    return values


def check_images() -> list[Image.Image]:
    """Images of different sizes and shapes (wide, tall, small, large) with noise and gradients."""
    rng = np.random.default_rng(0)
    images = []
    for width, height in ((64, 48), (37, 91), (300, 180), (20, 20), (128, 128)):
        noise = rng.integers(0, 256, (height, width, 3))
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        images.append(Image.fromarray(((noise + ramp) / 2).astype(np.uint8), "RGB"))
    return images


def prepare_image_classifier(model_dir: Path) -> Exportable:
    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    spec = preprocess_spec(processor)
    model = AutoModelForImageClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    classifier = ImageLogits(model).eval()
    images = check_images()
    theirs = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    try:
        ours = np.stack([preprocess(image, spec) for image in images])
    except ValueError as exc:
        raise ConversionError(f"preprocessing gives images of different shapes: {exc}") from None
    if ours.shape != theirs.shape:
        raise ConversionError(f"the server's preprocessing gives {ours.shape}, {type(processor).__name__} "
                              f"{theirs.shape}: refused")
    preprocessing = float(np.max(np.abs(ours - theirs)))
    if not preprocessing <= PREPROCESS_TOLERANCE:
        raise ConversionError(f"the server's preprocessing differs from {type(processor).__name__} by "
                              f"{preprocessing:.3g}: refused")
    print(f"modelyard: preprocessing matches {type(processor).__name__}: max abs diff {preprocessing:.2e}")
    with torch.inference_mode():
        want = classifier(torch.from_numpy(theirs)).numpy()
    labels = model.config.id2label
    return Exportable(
        module=classifier, sample={"pixel_values": ours[1:3]},
        axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, output="logits",
        feeds={"pixel_values": ours}, want=want, checks={"preprocess_max_abs_diff": preprocessing},
        save_assets=lambda work: None,
        manifest={
            "task": "image-classification",
            "labels": [str(labels.get(i, labels.get(str(i), i))) for i in range(int(want.shape[1]))],
            "activation": "sigmoid" if model.config.problem_type == "multi_label_classification" else "softmax",
            "preprocess": spec,
            "image_size": list(ours.shape[2:]),
        },
    )


def convert(model_dir: Path, out: Path, opset: int, tolerance: float, tensorrt: str, trt_tolerance: float,
            task: str = "auto") -> dict:
    task = detect_task(model_dir) if task == "auto" else task
    prepared = prepare_encoder(model_dir) if task == "embedding" else prepare_image_classifier(model_dir)
    module, names = prepared.module, list(prepared.sample)

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        onnx_path = work / "model.onnx"
        began = time.monotonic()
        torch.onnx.export(
            module, tuple(torch.from_numpy(prepared.sample[name]) for name in names), str(onnx_path),
            opset_version=opset, dynamo=False, input_names=names, output_names=[prepared.output],
            dynamic_axes=prepared.axes,
        )
        export_seconds = round(time.monotonic() - began, 2)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        check = {**prepared.checks, **compare("ONNX Runtime (CPU)", run_session(session, prepared.feeds),
                                              prepared.want, tolerance)}
        single = {name: value[:1] for name, value in prepared.sample.items()}
        with torch.inference_mode():
            single_want = module(*(torch.from_numpy(single[name]) for name in names)).numpy()
        check["single_input"] = compare("ONNX Runtime (CPU), one input", run_session(session, single),
                                        single_want, tolerance)["max_abs_diff"]

        trt: dict[str, Any] = {"built": False}
        reason = tensorrt_absent_reason() if tensorrt != "off" else "not asked for (--tensorrt off)"
        if reason is None:
            trt = build_tensorrt(onnx_path, work / "trt-cache", prepared.feeds, prepared.want, trt_tolerance)
        elif tensorrt == "require":
            raise ConversionError(f"TensorRT was required but cannot run here: {reason}")
        else:
            trt["reason"] = reason
            print(f"modelyard: TensorRT engine not built: {reason}")

        prepared.save_assets(work)
        manifest = {
            **prepared.manifest,
            "source": str(model_dir.resolve()),
            "inputs": [i.name for i in session.get_inputs()],
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
    parser = argparse.ArgumentParser(description="Convert an encoder or image classifier to ONNX (and TensorRT).")
    parser.add_argument("--model", required=True, type=Path,
                        help="a sentence-transformers or transformers image classification model directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced when the check passes)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference from PyTorch")
    parser.add_argument("--tensorrt", choices=["auto", "require", "off"], default="auto",
                        help="auto: build the FP16 engine where TensorRT and a GPU exist; require: fail otherwise")
    parser.add_argument("--trt-tolerance", type=float, default=1e-2, help="the same check for the FP16 engine")
    parser.add_argument("--task", choices=["auto", *TASKS], default="auto",
                        help="auto: embedding for a sentence-transformers directory, image-classification for a "
                             "transformers image classifier")
    args = parser.parse_args(argv)
    try:
        manifest = convert(args.model, args.out, args.opset, args.tolerance, args.tensorrt, args.trt_tolerance,
                           args.task)
    except ConversionError as exc:
        print(f"modelyard: conversion failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a model the exporter or runtime cannot take: say so in one line
        print(f"modelyard: conversion failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"modelyard: wrote {args.out} ({manifest['task']}, opset {manifest['opset']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
