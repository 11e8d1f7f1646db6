"""onnx engine: OpenAI POST /v1/embeddings from a model that
models/onnx/convert.py wrote, run by ONNX Runtime behind the dynamic batcher.

    python models/onnx/server.py --port P --model-path DIR --model-id ID \
        [--provider auto|tensorrt|cuda|cpu] [--max-batch-size 32] [--max-wait-ms 0] [--truncate]

--provider auto takes the best that exists: TensorRT (when the converter built
and checked an engine), then CUDA, then the CPU. Asking for one that does not
exist here is a load error that names what does. No torch is imported: the
service holds ONNX Runtime, the tokenizer and numpy only.
Requests, batching and answers: core/encoder_service.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# Run as a script by the engine's own interpreter: make the repository's core/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.encoder_service import EncoderService  # noqa: E402
from core.logs import log_event  # noqa: E402

log = logging.getLogger("modelyard.onnx")

MANIFEST = "modelyard-onnx.json"
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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


class OnnxEncoderService(EncoderService):
    name = "onnx"

    def __init__(self, options: argparse.Namespace) -> None:
        self.session: ort.InferenceSession | None = None
        self.tokenizer: Tokenizer | None = None
        self.counter: Tokenizer | None = None  # the same tokenizer without truncation, for counting
        self.inputs: list[str] = []
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS])
        parser.add_argument(
            "--threads", type=int, default=0, help="CPU threads per model call (0: ONNX Runtime's choice)"
        )

    def load(self) -> None:
        path = Path(self.options.model_path or "")
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{path} holds no {MANIFEST}: convert the model with models/onnx/convert.py")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("task") != "embedding":
            raise ValueError(f"{manifest_file}: task {manifest.get('task')!r} is not served here (embedding)")
        tensorrt = manifest.get("tensorrt", {})
        providers = choose_providers(self.options.provider, ort.get_available_providers(), bool(tensorrt.get("built")))
        if providers[0] == PROVIDERS["tensorrt"]:
            trt_options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                           "trt_engine_cache_path": str(path / "trt-cache")}
            providers = [(providers[0], trt_options), *providers[1:]]  # type: ignore[list-item]
        began = time.monotonic()
        settings = ort.SessionOptions()
        if self.options.threads:
            settings.intra_op_num_threads = self.options.threads
        self.session = ort.InferenceSession(str(path / "model.onnx"), sess_options=settings, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.max_tokens = int(manifest["max_tokens"])
        self.dimension = int(manifest["dimension"])
        self.normalized = bool(manifest["normalized"])
        self.counter = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.counter.no_truncation()
        self.counter.no_padding()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        if self.tokenizer.padding is None:  # tokenizer.json usually says how to pad; else its pad token
            pad_token = manifest.get("pad_token") or "[PAD]"
            pad_id = self.tokenizer.token_to_id(pad_token)
            self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        else:
            self.tokenizer.enable_padding(**{k: v for k, v in self.tokenizer.padding.items()
                                             if k in ("pad_id", "pad_type_id", "pad_token", "direction")})
        self.device = self.session.get_providers()[0]
        log_event(log, "model loaded", provider=self.device, providers=self.session.get_providers(),
                  dimension=self.dimension, max_tokens=self.max_tokens, seconds=round(time.monotonic() - began, 3),
                  model_path=str(path))

    def count_tokens(self, texts: list[str]) -> list[int]:
        assert self.counter is not None
        return [len(encoding.ids) for encoding in self.counter.encode_batch(texts)]

    def encode(self, texts: list[str]) -> np.ndarray:
        assert self.tokenizer is not None and self.session is not None
        encodings = self.tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feeds = {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}
        return self.session.run(None, feeds)[0]


if __name__ == "__main__":
    OnnxEncoderService.main()
