"""onnx engine, task image-classification: POST /v1/predict.

    {"model": "vit-tiny", "input": ["<base64 PNG/JPEG/...>", "data:image/png;base64,..."], "top_k": 3}
    -> {"object": "list", "model": "vit-tiny", "usage": {"images": 2},
        "data": [{"object": "classification", "index": 0,
                  "labels": [{"label": "tabby cat", "id": 281, "score": 0.91}, ...]}, ...]}

Each request's images are decoded and preprocessed in a worker thread
(image_inputs.py: what the converter checked against the model's own image
processor), then go through the dynamic batcher (core/batching.py), so the
images of concurrent requests share one model call. Scores are the softmax
of the logits, or their sigmoid for a multi-label model.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from image_inputs import ImageInputError, decode_image, preprocess
from runtime import add_runtime_arguments, open_session, read_manifest

from core.base_service import BaseService
from core.batching import DynamicBatcher, add_batching_arguments
from core.errors import ServiceError
from core.logs import log_event
from core.protocol import PredictRequest, now

log = logging.getLogger("modelyard.onnx")
DECODE_THREADS = 2


def scores(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class OnnxImageClassifier(BaseService):
    name = "onnx"

    def __init__(self, options: argparse.Namespace) -> None:
        self.session: ort.InferenceSession | None = None
        self.input_name = "pixel_values"
        self.labels: list[str] = []
        self.activation = "softmax"
        self.spec: dict[str, Any] = {}
        self.device = "unloaded"
        self.created = now()
        # Decoding holds a whole image in memory (40 Mpx RGBA: 600 MB while converted): two at a time.
        self.decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
        super().__init__(options)
        self.batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            self._classify_batch, max_batch_size=options.max_batch_size, max_wait_ms=options.max_wait_ms
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_batching_arguments(parser, "images")
        add_runtime_arguments(parser)
        parser.add_argument("--max-images", type=int, default=64, help="images per request")
        parser.add_argument("--max-image-pixels", type=int, default=40_000_000,
                            help="largest width x height of an image (it is decoded in memory)")

    def load(self) -> None:
        path = Path(self.options.model_path or "")
        manifest = read_manifest(path, self.options.task or "image-classification")
        began = time.monotonic()
        self.session = open_session(path, manifest, self.options)
        self.input_name = self.session.get_inputs()[0].name
        self.labels = [str(label) for label in manifest["labels"]]
        self.activation = manifest.get("activation", "softmax")
        self.spec = manifest["preprocess"]
        self.device = self.session.get_providers()[0]
        log_event(log, "model loaded", provider=self.device, providers=self.session.get_providers(),
                  labels=len(self.labels), seconds=round(time.monotonic() - began, 3), model_path=str(path))

    def health_details(self) -> dict[str, Any]:
        return {
            "model": self.options.model_id,
            "task": "image-classification",
            "device": self.device,
            "labels": len(self.labels),
            "batching": self.batcher.health(),
        }

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/predict", self.predict, methods=["POST"])

    async def models(self) -> dict[str, Any]:
        model = {"id": self.options.model_id, "object": "model", "created": self.created, "owned_by": "modelyard"}
        return {"object": "list", "data": [model]}

    async def predict(self, body: PredictRequest) -> JSONResponse:
        self._require_ready()
        images = [body.input] if isinstance(body.input, str) else body.input
        if not images:
            raise ServiceError(400, "input must not be an empty list", "invalid_value", "input")
        if len(images) > self.options.max_images:
            raise ServiceError(400, f"input: at most {self.options.max_images} images per request, got {len(images)}",
                               "invalid_value", "input")
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self.decoders, self._prepare, images, isinstance(body.input, str))
        probabilities = await self.batcher.submit(pixels)
        top_k = min(body.top_k, len(self.labels))
        data = []
        for index, row in enumerate(probabilities):
            best = np.argsort(-row, kind="stable")[:top_k]
            labels = [{"label": self.labels[i], "id": int(i), "score": float(row[i])} for i in best]
            data.append({"object": "classification", "index": index, "labels": labels})
        return JSONResponse({"object": "list", "model": body.model, "data": data, "usage": {"images": len(images)}})

    def _prepare(self, images: list[str], single: bool) -> list[np.ndarray]:
        """Every image decoded and preprocessed; a 400 naming the first bad one."""
        prepared = []
        for index, value in enumerate(images):
            param = "input" if single else f"input.{index}"
            try:
                prepared.append(preprocess(decode_image(value, self.options.max_image_pixels), self.spec))
            except ImageInputError as exc:
                raise ServiceError(400, f"{param} {exc}", "invalid_image", param) from None
        return prepared

    def _classify_batch(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        assert self.session is not None
        logits = self.session.run(None, {self.input_name: np.stack(pixels)})[0]
        return list(scores(logits.astype(np.float64), self.activation))
