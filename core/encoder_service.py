"""EncoderService: OpenAI POST /v1/embeddings for any text encoder, batched.

The embeddings engine (sentence-transformers on PyTorch) and the onnx engine
(ONNX Runtime) differ only in how they load a model and turn a list of texts
into vectors; this class does the rest: request checks, token counts and
context limits, the dynamic batcher (core/batching.py), `dimensions`, and the
float or base64 answer the openai client expects.

A subclass implements load(), count_tokens(texts) and encode(texts) and sets
`max_tokens`, `dimension` and `normalized` in load().

Engine arguments (models.yaml `args`): max_batch_size (texts per model call,
default 32; 1 turns batching off), max_wait_ms (how long the first text of a
batch waits for companions, default 0: a batch is whatever queued while the
previous one ran, so a lone request never waits; scripts/bench.sh embeddings
measured a wait costing latency at low load and gaining nothing at high load
on a CPU), truncate (cut inputs longer than the
model's context instead of answering 400, default false).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from core.base_service import BaseService
from core.batching import DynamicBatcher, add_batching_arguments
from core.errors import ServiceError
from core.protocol import now

# OpenAI's own limit on inputs per request.
MAX_INPUTS = 2048
# Requests with less text than this are tokenized (to count) on the event loop.
INLINE_TOKENIZE_CHARS = 4096


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def input_texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The request's `input` as a list of non-empty texts; 400 for anything else."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ServiceError(400, "input must not be an empty list", "invalid_value", "input")
    if not all(isinstance(text, str) for text in texts):
        message = "input: token arrays are not supported by this engine; send the text itself"
        raise ServiceError(400, message, "unsupported_input", "input")
    if len(texts) > MAX_INPUTS:
        message = f"input: at most {MAX_INPUTS} texts per request, got {len(texts)}"
        raise ServiceError(400, message, "invalid_value", "input")
    for index, text in enumerate(texts):
        if not text.strip():
            param = "input" if isinstance(value, str) else f"input.{index}"
            raise ServiceError(400, f"{param}: an input must not be empty", "invalid_value", param)
    return texts  # type: ignore[return-value]  # checked above


def fit_dimensions(vectors: np.ndarray, dimensions: int | None, normalized: bool) -> np.ndarray:
    """Keep the first `dimensions` components (Matryoshka-style, as OpenAI's
    `dimensions` does), normalized again when the model's vectors are."""
    if dimensions is None or dimensions >= vectors.shape[1]:  # larger was refused before encoding
        return vectors
    cut = vectors[:, :dimensions]
    if normalized:
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        cut = cut / np.maximum(norms, 1e-12)
    return cut


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what the openai client asks for by default: float32, little-endian
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


class EncoderService(BaseService):
    name = "encoder"

    def __init__(self, options: argparse.Namespace) -> None:
        self.max_tokens = 0  # context length in tokens, special tokens included
        self.dimension = 0
        self.normalized = False  # the model's vectors have length 1
        self.device = "unloaded"
        self.created = now()
        super().__init__(options)
        self.batcher: DynamicBatcher[str, np.ndarray] = DynamicBatcher(
            self._encode_batch, max_batch_size=options.max_batch_size, max_wait_ms=options.max_wait_ms
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_batching_arguments(parser, "texts")
        parser.add_argument("--truncate", action="store_true", help="cut long inputs instead of answering 400")

    # --- for subclasses ---------------------------------------------------

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the model sees it, special tokens included, before truncation."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> np.ndarray:
        """A (len(texts), dimension) float array; runs in the batcher's thread."""
        raise NotImplementedError

    # --- serving ----------------------------------------------------------

    def health_details(self) -> dict[str, Any]:
        return {
            "model": self.options.model_id,
            "device": self.device,
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            "batching": self.batcher.health(),
        }

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/embeddings", self.embeddings, methods=["POST"])

    async def models(self) -> dict[str, Any]:
        model = {"id": self.options.model_id, "object": "model", "created": self.created, "owned_by": "modelyard"}
        return {"object": "list", "data": [model]}

    async def embeddings(self, body: EmbeddingsBody) -> JSONResponse:
        if not self.ready:
            raise ServiceError(503, "the model is still loading", "model_loading")
        texts = input_texts(body.input)
        if body.dimensions is not None and body.dimensions > self.dimension:
            message = f"dimensions: this model's vectors have {self.dimension} dimensions; asked for {body.dimensions}"
            raise ServiceError(400, message, "invalid_value", "dimensions")
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            counts = self.count_tokens(texts)  # microseconds: a thread hop would cost more
        else:
            counts = await asyncio.to_thread(self.count_tokens, texts)
        counts = self._check_lengths(counts, single=isinstance(body.input, str))
        vectors = np.stack(await self.batcher.submit(texts))
        vectors = fit_dimensions(vectors, body.dimensions, self.normalized)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)
        ]
        tokens = sum(counts)
        # A JSONResponse as is: FastAPI's jsonable_encoder would walk every float.
        return JSONResponse({"object": "list", "data": data, "model": body.model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _check_lengths(self, counts: list[int], single: bool) -> list[int]:
        """Token counts as used; 400 for a text over the context unless --truncate."""
        limit = self.max_tokens
        for index, count in enumerate(counts):
            if count > limit and not self.options.truncate:
                param = "input" if single else f"input.{index}"
                message = (f"{param} has {count} tokens; this model reads at most {limit}. "
                           "Split the text, or start the model with args: {truncate: true} to cut it")
                raise ServiceError(400, message, "context_length_exceeded", param)
        return [min(count, limit) for count in counts]

    def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encode(texts))
