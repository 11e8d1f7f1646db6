"""musicgen engine: POST /v1/audio/generations, music from a text prompt with
transformers' MusicGen (MusicgenForConditionalGeneration) from a local model
directory (facebook/musicgen-small and its siblings, melody aside).

    python models/musicgen/server.py --port P --model-path DIR --model-id ID \
        [--device auto] [--dtype auto] [--default-duration 10] [--max-duration 30]

The answer is a WAV file (16-bit PCM at the model's sample rate, its channels)
of exactly the requested duration: the body itself (response_format `audio`,
as OpenAI's /v1/audio/speech answers), inline base64 (`b64_json`) or a file
under $MODELYARD_FILES_DIR/audio/ that the orchestrator serves under an
expiring signed URL (`url`). One generation runs at a time: it uses the whole
device.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import math
import secrets
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from transformers import AutoTokenizer, MusicgenForConditionalGeneration

# Run as a script by the engine's own interpreter: make the repository's core/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.base_service import BaseService  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.generated_files import save_generated  # noqa: E402
from core.logs import log_event  # noqa: E402
from core.protocol import AudioGenerationRequest, now  # noqa: E402
from core.torch_device import (  # noqa: E402
    add_device_arguments,
    choose_device,
    choose_dtype,
    keep_to_reservation,
)

log = logging.getLogger("modelyard.musicgen")


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """(channels, samples) floats in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.T.tobytes())  # interleaved: one frame holds every channel's sample
    return buffer.getvalue()


def exact_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Cut (or pad with silence) to exactly `samples` per channel."""
    if audio.shape[1] >= samples:
        return audio[:, :samples]
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))


class MusicgenService(BaseService):
    name = "musicgen"

    def __init__(self, options: argparse.Namespace) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self.sample_rate = 0
        self.frame_rate = 0.0  # audio-token frames per second
        self.delay = 0  # frames of the codebook delay pattern, which decode to no audio
        self.longest = 0.0  # seconds: the decoder's positions, or --max-duration
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_device_arguments(parser)
        parser.add_argument("--default-duration", type=float, default=10.0, help="seconds when a request says none")
        parser.add_argument("--max-duration", type=float, default=30.0, help="longest duration a request may ask for")

    def load(self) -> None:
        path = self.options.model_path
        if not path or not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no MusicGen model at {path} (config.json missing)")
        device = choose_device(self.options.device)
        keep_to_reservation(device)
        dtype = choose_dtype(self.options.dtype, device)
        began = time.monotonic()
        model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
        self.model = model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        audio = model.config.audio_encoder
        self.sample_rate = int(audio.sampling_rate)
        self.frame_rate = float(audio.frame_rate)
        decoder = model.config.decoder
        # Each channel's codebooks are delayed one frame after another (stereo
        # models interleave two channels' codebooks): num_codebooks / channels - 1 frames.
        self.delay = int(decoder.num_codebooks) // int(getattr(decoder, "audio_channels", 1) or 1) - 1
        # The decoder reads at most max_position_embeddings frames, the delay included.
        positions = int(decoder.max_position_embeddings) - self.delay - 1
        self.longest = min(self.options.max_duration, positions / self.frame_rate)
        self.device, self.dtype = device, dtype
        log_event(log, "model loaded", device=device, dtype=str(dtype), sample_rate=self.sample_rate,
                  frame_rate=self.frame_rate, max_duration=round(self.longest, 2),
                  seconds=round(time.monotonic() - began, 3), model_path=path)

    def health_details(self) -> dict[str, Any]:
        return {"model": self.options.model_id, "device": self.device, "sample_rate": self.sample_rate,
                "max_duration": round(self.longest, 2)}

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/audio/generations", self.generations, methods=["POST"])

    # --- requests -----------------------------------------------------------

    def _duration(self, body: AudioGenerationRequest) -> float:
        duration = body.duration if body.duration is not None else min(self.options.default_duration, self.longest)
        if duration > self.longest:
            raise ServiceError(400, f"duration {duration:g} s is over this model's limit of {self.longest:g} s",
                               param="duration")
        if round(duration * self.sample_rate) < 1:
            raise ServiceError(400, f"duration {duration:g} s is shorter than one sample", param="duration")
        return duration

    async def generations(self, body: AudioGenerationRequest, request: Request) -> Any:
        self._require_ready()
        duration = self._duration(body)
        audio = await self.run_in_turn(request, lambda: self._generate(body, duration))
        wav = wav_bytes(audio, self.sample_rate)
        if body.response_format == "audio":
            return Response(wav, media_type="audio/wav")
        item: dict[str, Any] = {"duration": duration, "sample_rate": self.sample_rate,
                                "channels": int(audio.shape[0]), "format": body.format}
        if body.response_format == "b64_json":
            item["b64_json"] = base64.b64encode(wav).decode()
        else:
            item["url"] = await asyncio.to_thread(save_generated, wav, "audio", ".wav")
        return {"created": now(), "data": [item]}

    def _generate(self, body: AudioGenerationRequest, duration: float) -> np.ndarray:
        samples = round(duration * self.sample_rate)
        frames = math.ceil(duration * self.frame_rate) + self.delay
        # The seed makes a request repeatable; without one, a fresh one (not the previous request's state).
        torch.manual_seed(body.seed if body.seed is not None else secrets.randbits(63))
        options: dict[str, Any] = {"max_new_tokens": frames, "min_new_tokens": frames, "do_sample": True}
        if body.guidance is not None:
            options["guidance_scale"] = body.guidance
        if body.temperature is not None:
            options["temperature"] = body.temperature
        inputs = self.tokenizer([body.prompt], return_tensors="pt").to(self.device)
        began = time.monotonic()
        with torch.inference_mode():
            values = self.model.generate(**inputs, **options)  # (batch, channels, samples)
        generated = values[0].float().cpu().numpy()
        if generated.shape[1] < samples:
            log_event(log, "generated audio is short; padded with silence", logging.WARNING,
                      samples=generated.shape[1], wanted=samples)
        audio = exact_length(generated, samples)
        log_event(log, "audio generated", duration=duration, frames=frames,
                  seconds=round(time.monotonic() - began, 3))
        return audio


if __name__ == "__main__":
    MusicgenService.main()
