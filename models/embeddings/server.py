"""embeddings engine: OpenAI POST /v1/embeddings from a sentence-transformers
model directory, with texts from concurrent requests batched together.

    python models/embeddings/server.py --port P --model-path DIR --model-id ID \
        [--device auto] [--max-batch-size 32] [--max-wait-ms 5] [--truncate]

The model directory is what SentenceTransformer.save() writes (modules.json,
the transformer, its pooling and normalization), such as all-MiniLM-L6-v2.
Requests, batching and answers: core/encoder_service.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Normalize
from tokenizers import Tokenizer

# Run as a script by the engine's own interpreter: make the repository's core/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.encoder_service import EncoderService  # noqa: E402
from core.logs import log_event  # noqa: E402
from core.torch_device import choose_device, keep_to_reservation  # noqa: E402

log = logging.getLogger("modelyard.embeddings")


class SentenceTransformersService(EncoderService):
    name = "embeddings"

    def __init__(self, options: argparse.Namespace) -> None:
        self.model: Any = None
        self.counter: Tokenizer | None = None
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    def load(self) -> None:
        path = self.options.model_path
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        device = choose_device(self.options.device)
        keep_to_reservation(device)
        began = time.monotonic()
        model = SentenceTransformer(path, device=device, local_files_only=True)
        model.eval()
        self.model = model
        # Counting runs beside the batch thread: a tokenizer of its own, since
        # transformers' tokenizer changes shared truncation/padding state per call.
        self.counter = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        self.device = device
        self.max_tokens = int(model.max_seq_length)
        self.dimension = int(model.get_embedding_dimension())
        self.normalized = any(isinstance(module, Normalize) for module in model)
        log_event(log, "model loaded", device=device, dimension=self.dimension, max_tokens=self.max_tokens,
                  normalized=self.normalized, seconds=round(time.monotonic() - began, 3), model_path=path)

    def count_tokens(self, texts: list[str]) -> list[int]:
        assert self.counter is not None
        return [len(encoding.ids) for encoding in self.counter.encode_batch(texts)]

    def encode(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            # One call for the whole batch; sentence-transformers sorts it by
            # length and truncates at max_seq_length (lengths were checked before).
            return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)


if __name__ == "__main__":
    SentenceTransformersService.main()
