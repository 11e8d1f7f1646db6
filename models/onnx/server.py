"""onnx engine: a model that models/onnx/convert.py wrote, run by ONNX Runtime
behind the dynamic batcher. Two tasks, by the model's manifest:

- embedding: OpenAI POST /v1/embeddings (this file; requests, batching and
  answers in core/encoder_service.py);
- image-classification: POST /v1/predict (classifier.py).

    python models/onnx/server.py --port P --model-path DIR --model-id ID \
        [--task embedding|image-classification] [--provider auto|tensorrt|cuda|cpu] \
        [--max-batch-size 32] [--max-wait-ms 0] [--truncate]

Providers: runtime.py. No torch is imported: the service holds ONNX Runtime,
numpy, and the tokenizer or Pillow.
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

from classifier import OnnxImageClassifier  # noqa: E402  (models/onnx/, the script's own folder)
from runtime import MANIFEST, add_runtime_arguments, open_session, read_manifest  # noqa: E402

from core.base_service import BaseService  # noqa: E402
from core.encoder_service import EncoderService  # noqa: E402
from core.logs import log_event  # noqa: E402

log = logging.getLogger("modelyard.onnx")


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
        add_runtime_arguments(parser)

    def load(self) -> None:
        path = Path(self.options.model_path or "")
        manifest = read_manifest(path, self.options.task or "embedding")
        began = time.monotonic()
        self.session = open_session(path, manifest, self.options)
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


def service_class(argv: list[str]) -> type[BaseService]:
    """The service for the task the orchestrator names (--task), else the one
    the model's manifest names; the embedding service when neither says (its
    load then reports what is wrong with the directory)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--task")
    probe.add_argument("--model-path")
    known, _ = probe.parse_known_args(argv)
    task = known.task
    if task is None and known.model_path:
        try:
            task = json.loads((Path(known.model_path) / MANIFEST).read_text()).get("task")
        except (OSError, ValueError):
            task = None
    return OnnxImageClassifier if task == "image-classification" else OnnxEncoderService


if __name__ == "__main__":
    service_class(sys.argv[1:]).main()
