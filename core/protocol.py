"""OpenAI wire formats: the request bodies modelyard validates, in one place.

Unknown fields are kept (extra="allow"): engines accept options the
orchestrator does not know about, and the orchestrator forwards them untouched.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_keep_alive(value: str | int | float) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go-style duration
    ("30s", "5m", "1h30m"); negative means forever (math.inf), 0 means
    unload as soon as the model is idle."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or a duration such as '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # "300" means seconds
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"{value!r} is not a duration; use seconds or e.g. '30s', '5m', '1h30m'") from None
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
            seconds = sign * sum(float(n) * scale[u] for n, u in parts)
    if math.isnan(seconds):
        raise ValueError("must be a number of seconds or a duration such as '5m'")
    return math.inf if seconds < 0 else seconds


class _OpenAIRequest(BaseModel):
    # strict: "stream": "yes" or "max_tokens": "5" is a client bug to report, not to guess at.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    stream: bool = False
    # How long the model stays loaded once idle after this request (Ollama's
    # keep_alive); the orchestrator consumes it, the engine never sees it.
    keep_alive: str | int | float | None = None

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            parse_keep_alive(value)
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1)
    # A string, or the list-of-parts form; None is allowed for assistant tool calls.
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)


class _WholeAnswerRequest(_OpenAIRequest):
    """A request whose answer comes whole: `stream: true` is refused."""

    @field_validator("stream")
    @classmethod
    def _not_streamed(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("this route does not stream its answers; leave stream out or false")
        return stream


class EmbeddingRequest(_OpenAIRequest):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str | None = None


SIZE = r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"
# An engine answers a generated file it wrote under $MODELYARD_FILES_DIR as
# FILE_SCHEME + its relative path; the orchestrator signs it (orchestrator/files.py).
FILE_SCHEME = "modelyard-file:"


class ImageGenerationRequest(_WholeAnswerRequest):
    """OpenAI's images/generations, plus the diffusion knobs: steps, guidance, seed."""

    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=SIZE, description="WIDTHxHEIGHT in pixels; unset: the model's own")
    response_format: Literal["url", "b64_json"] = "url"
    negative_prompt: str | None = None
    steps: int | None = Field(None, ge=1, le=500)
    guidance: float | None = Field(None, ge=0, le=50)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    def dimensions(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        width, height = self.size.split("x")
        return int(width), int(height)


class AudioGenerationRequest(_WholeAnswerRequest):
    """Music from a text prompt (the musicgen engine). response_format `audio`
    answers the file itself, as OpenAI's /v1/audio/speech does; `url` and
    `b64_json` answer JSON, as images/generations does."""

    prompt: str = Field(min_length=1, max_length=4000)
    duration: float | None = Field(None, gt=0, le=600, description="seconds; unset: the engine's default")
    format: Literal["wav"] = "wav"
    response_format: Literal["audio", "url", "b64_json"] = "audio"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    guidance: float | None = Field(None, ge=0, le=50)
    temperature: float | None = Field(None, gt=0, le=2)


class PredictRequest(_WholeAnswerRequest):
    """Image classification (the onnx engine): images as base64 or data: URLs,
    answered with each image's top_k labels and scores."""

    input: str | list[str] = Field(description="one image, or a list of them")
    top_k: int = Field(5, ge=1, le=1000)


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
