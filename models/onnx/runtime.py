"""What both onnx services share: the manifest the converter wrote, and an
ONNX Runtime session on the best provider that exists here.

--provider auto takes TensorRT (when the converter built and checked an
engine), then CUDA, then the CPU. Asking for one that does not exist here is
a load error that names what does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import onnxruntime as ort

MANIFEST = "modelyard-onnx.json"
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# The models.yaml `type` each manifest task serves (the orchestrator passes it as --task).
TASKS = ("embedding", "image-classification")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per model call (0: ONNX Runtime's choice)")
    parser.add_argument("--task", choices=TASKS, help="what models.yaml says the model is; checked with the manifest")


def read_manifest(path: Path, task: str | None) -> dict[str, Any]:
    """The converter's manifest in path; an error naming the fix when it is
    missing or describes another task than the one asked for."""
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{path} holds no {MANIFEST}: convert the model with models/onnx/convert.py")
    manifest = json.loads(manifest_file.read_text())
    if task is not None and manifest.get("task") != task:
        raise ValueError(f"{manifest_file}: the converted model is task {manifest.get('task')!r}, but models.yaml "
                         f"serves it as {task!r}; fix its `type` (embedding or classification)")
    return manifest


def choose_providers(requested: str, available: list[str], tensorrt_built: bool) -> list[str]:
    """ONNX Runtime providers in order of preference; RuntimeError naming what exists."""
    if requested != "auto":
        wanted = PROVIDERS[requested]
        if wanted not in available:
            raise RuntimeError(f"--provider {requested}: {wanted} is not available here "
                               f"(onnxruntime has {', '.join(available)})")
        if requested == "tensorrt" and not tensorrt_built:
            raise RuntimeError("--provider tensorrt: the converter built no checked TensorRT engine for this model")
        fallbacks = [PROVIDERS["cuda"], PROVIDERS["cpu"]] if requested == "tensorrt" else [PROVIDERS["cpu"]]
        return [wanted, *(p for p in fallbacks if p in available and p != wanted)]
    chosen = [PROVIDERS["tensorrt"]] if tensorrt_built and PROVIDERS["tensorrt"] in available else []
    chosen += [p for p in (PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
    return chosen


def open_session(path: Path, manifest: dict[str, Any], options: argparse.Namespace) -> ort.InferenceSession:
    """path/model.onnx on the providers options.provider asks for."""
    tensorrt = manifest.get("tensorrt", {})
    providers: list[Any] = choose_providers(options.provider, ort.get_available_providers(),
                                            bool(tensorrt.get("built")))
    if providers[0] == PROVIDERS["tensorrt"]:
        trt_options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(path / "trt-cache")}
        providers = [(providers[0], trt_options), *providers[1:]]
    settings = ort.SessionOptions()
    if options.threads:
        settings.intra_op_num_threads = options.threads
    return ort.InferenceSession(str(path / "model.onnx"), sess_options=settings, providers=providers)
