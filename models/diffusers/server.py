"""diffusers engine: OpenAI POST /v1/images/generations from a local
text-to-image pipeline directory (anything AutoPipelineForText2Image loads:
Stable Diffusion, SDXL, ...).

    python models/diffusers/server.py --port P --model-path DIR --model-id ID \
        [--device auto] [--dtype auto] [--default-steps 30] [--default-guidance 7.5] [--max-pixels 1048576]

Images asked for as `url` are written as PNG under $MODELYARD_FILES_DIR/images/
and answered as `modelyard-file:images/<name>.png`, which the orchestrator
turns into an expiring signed URL (orchestrator/files.py). `b64_json` images
come back inline. One generation runs at a time: a pipeline uses the whole
device, and two at once would only each run slower.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image
from fastapi import FastAPI, Request

# Run as a script by the engine's own interpreter: make the repository's core/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.base_service import BaseService  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.generated_files import save_generated  # noqa: E402
from core.logs import log_event  # noqa: E402
from core.protocol import ImageGenerationRequest, now  # noqa: E402
from core.torch_device import (  # noqa: E402
    add_device_arguments,
    choose_device,
    choose_dtype,
    keep_to_reservation,
)

log = logging.getLogger("modelyard.diffusers")


class DiffusersService(BaseService):
    name = "diffusers"

    def __init__(self, options: argparse.Namespace) -> None:
        self.pipeline: Any = None
        self.device = "cpu"
        self.default_size = (512, 512)
        self.scale = 8  # width and height must be multiples of the VAE's downscaling
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_device_arguments(parser)
        parser.add_argument("--default-steps", type=int, default=30, help="denoising steps when a request says none")
        parser.add_argument(
            "--default-guidance", type=float, default=7.5, help="guidance scale when a request says none"
        )
        parser.add_argument(
            "--max-pixels", type=int, default=1024 * 1024, help="largest width x height accepted (memory grows with it)"
        )

    def load(self) -> None:
        path = self.options.model_path
        if not path or not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers pipeline at {path} (model_index.json missing)")
        device = choose_device(self.options.device)
        keep_to_reservation(device)
        dtype = choose_dtype(self.options.dtype, device)
        began = time.monotonic()
        pipeline = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline, self.device, self.dtype = pipeline, device, dtype
        # Pipelines check multiples of 8; a VAE that downscales more needs its own factor.
        self.scale = max(8, int(getattr(pipeline, "vae_scale_factor", 8) or 8))
        # The UNet's sample size in latents, times the VAE's factor; 512x512 for pipelines without one.
        sample = getattr(getattr(getattr(pipeline, "unet", None), "config", None), "sample_size", None)
        if isinstance(sample, (list, tuple)) and len(sample) == 2:
            self.default_size = (int(sample[1]) * self.scale, int(sample[0]) * self.scale)
        elif isinstance(sample, int):
            self.default_size = (sample * self.scale, sample * self.scale)
        log_event(log, "pipeline loaded", pipeline=type(pipeline).__name__, device=device, dtype=str(dtype),
                  default_size=f"{self.default_size[0]}x{self.default_size[1]}",
                  seconds=round(time.monotonic() - began, 3), model_path=path)

    def health_details(self) -> dict[str, Any]:
        return {"model": self.options.model_id, "device": self.device,
                "default_size": f"{self.default_size[0]}x{self.default_size[1]}"}

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/images/generations", self.generations, methods=["POST"])

    # --- requests -----------------------------------------------------------

    def _size(self, body: ImageGenerationRequest) -> tuple[int, int]:
        width, height = body.dimensions() or self.default_size
        if width % self.scale or height % self.scale:
            raise ServiceError(400, f"size {width}x{height}: width and height must be multiples of {self.scale}",
                               param="size")
        if width * height > self.options.max_pixels:
            raise ServiceError(400, f"size {width}x{height} is over this model's limit of "
                               f"{self.options.max_pixels} pixels", param="size")
        return width, height

    async def generations(self, body: ImageGenerationRequest, request: Request) -> dict[str, Any]:
        self._require_ready()
        width, height = self._size(body)
        images = await self.run_in_turn(request, lambda: self._generate(body, width, height))
        if body.response_format == "b64_json":
            data = [{"b64_json": base64.b64encode(png).decode()} for png in images]
        else:
            data = [{"url": await asyncio.to_thread(save_generated, png, "images", ".png")} for png in images]
        return {"created": now(), "data": data}

    def _generate(self, body: ImageGenerationRequest, width: int, height: int) -> list[bytes]:
        # The seed makes a request repeatable: same seed, same prompt and size, same images.
        generator = torch.Generator("cpu").manual_seed(body.seed) if body.seed is not None else None
        with torch.inference_mode():
            began = time.monotonic()
            try:
                result = self.pipeline(
                    prompt=body.prompt,
                    negative_prompt=body.negative_prompt,
                    num_images_per_prompt=body.n,
                    width=width,
                    height=height,
                    num_inference_steps=body.steps or self.options.default_steps,
                    guidance_scale=body.guidance if body.guidance is not None else self.options.default_guidance,
                    generator=generator,
                )
            except ValueError as exc:  # the pipeline's own checks of its inputs
                raise ServiceError(400, f"the pipeline refused the request: {exc}") from None
            seconds = time.monotonic() - began
        pngs = []
        for image in result.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        log_event(log, "images generated", n=body.n, size=f"{width}x{height}", seconds=round(seconds, 3))
        return pngs


if __name__ == "__main__":
    DiffusersService.main()
