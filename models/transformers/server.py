"""transformers engine: OpenAI chat and text completions from a local HF directory.

    python models/transformers/server.py --port P --model-path DIR --model-id ID \
        [--dtype auto] [--device auto] [--default-max-tokens 256] \
        [--default-temperature 1.0] [--max-context 2048]

Routes: POST /v1/chat/completions, POST /v1/completions (both with stream: true),
GET /v1/models, and BaseService's GET /health.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jinja2 import TemplateError
from transformers import (
    AsyncTextIteratorStreamer,
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
)

# Run as a script by the engine's own interpreter: make the repository's core/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.base_service import BaseService, sse_response  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.logs import log_event  # noqa: E402
from core.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, completion_id, now  # noqa: E402
from core.torch_device import choose_device, keep_to_reservation  # noqa: E402

log = logging.getLogger("modelyard.transformers")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# How often a running generation checks whether its client is still there.
DISCONNECT_POLL_S = 0.25


class CancelCriteria(StoppingCriteria):
    """Stops generate() at the next token once `event` is set (client gone, shutdown)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class Generation:
    """One request, tokenized and with its sampling settings resolved."""

    inputs: dict[str, torch.Tensor]
    max_new_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stop: list[str]
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string begins in text, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class StopScanner:
    """Cuts streamed text at the first stop string.

    Text that could be the beginning of a stop string is held back until the
    next piece shows whether it is one, so a stop string never reaches the client.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        self.pending += piece
        cut = find_stop(self.pending, self.stops)
        if cut is not None:
            self.hit = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise ServiceError(400, "stop: at most 4 stop sequences are allowed", "invalid_value", "stop")
    return [s for s in stops if s]


def include_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    options = getattr(body, "stream_options", None)
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ServiceError(400, "stream_options must be an object", "invalid_type", "stream_options")
    return bool(options.get("include_usage"))


def message_text(message: ChatMessage, index: int) -> str:
    """A message's content as one string; the list-of-parts form may hold text parts only."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    param = f"messages.{index}.content"
    for part in content:
        if part.get("type") != "text":
            message = f"{param}: only text parts are supported by this model, got type {part.get('type')!r}"
            raise ServiceError(400, message, "invalid_content", param)
        if not isinstance(part.get("text"), str):
            raise ServiceError(400, f"{param}: a text part needs a string `text`", "invalid_content", param)
        texts.append(part["text"])
    return "\n".join(texts)


class TransformersService(BaseService):
    name = "transformers"
    can_sleep = True  # the sleep tier: the weights move to host memory and back

    def __init__(self, options: argparse.Namespace) -> None:
        # One generate() at a time, in this one thread: the model exists once in
        # memory, and two generations would only fight over the same CPU cores or
        # GPU, each running slower. The single worker is the lock: requests queue
        # in arrival order and wait their turn.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.device = "unloaded"
        self.dtype: torch.dtype | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.pad_token_id: int | None = None
        self.created = now()
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--default-max-tokens", type=int, default=256)
        parser.add_argument("--default-temperature", type=float, default=1.0)
        parser.add_argument("--max-context", type=int, default=2048, help="prompt plus completion, in tokens")

    # --- loading ------------------------------------------------------------

    def load(self) -> None:
        opts = self.options
        if not opts.model_path or not Path(opts.model_path).is_dir():
            raise FileNotFoundError(f"model directory not found: {opts.model_path}")
        device = choose_device(opts.device)
        if opts.dtype != "auto":
            dtype = DTYPES[opts.dtype]
        elif device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16  # measured faster than float32 for small models on CPU

        keep_to_reservation(device)

        began = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(opts.model_path)
        model = AutoModelForCausalLM.from_pretrained(opts.model_path, dtype=dtype)
        self.model = model.to(device).eval()
        trained = getattr(model.config, "max_position_embeddings", None)
        if trained and opts.max_context > trained:
            # Positions beyond what the model was trained on give garbage, not an error.
            log_event(log, "--max-context exceeds the model's; using the model's", logging.WARNING, model=trained)
            opts.max_context = trained
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = self.tokenizer.eos_token_id if pad is None else pad
        self.device, self.dtype = device, dtype
        log_event(
            log,
            "model loaded",
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            seconds=round(time.monotonic() - began, 3),
            parameters=sum(p.numel() for p in model.parameters()),
            max_context=opts.max_context,
            model_path=opts.model_path,
        )

    def sleep(self) -> None:
        # On the generation thread, so it never moves weights under a generation.
        self._worker.submit(self._move, "cpu").result()

    def wake(self) -> None:
        self._worker.submit(self._move, self.device).result()

    def _move(self, device: str) -> None:
        self.model.to(device)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()  # give the freed memory back to the driver, for other services

    def health_details(self) -> dict[str, Any]:
        dtype = str(self.dtype).removeprefix("torch.") if self.dtype else None
        return {"model": self.options.model_id, "device": self.device, "dtype": dtype}

    # --- routes -------------------------------------------------------------

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])

    async def models(self) -> dict[str, Any]:
        model = {"id": self.options.model_id, "object": "model", "created": self.created, "owned_by": "modelyard"}
        return {"object": "list", "data": [model]}

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._require_ready()
        usage = body.stream and include_usage(body)
        messages = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(body.messages)]
        gen = await asyncio.to_thread(
            self._prepare, self._chat_inputs, messages, body.token_limit(self.options.default_max_tokens), body
        )
        rid, created = completion_id("chatcmpl"), now()
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}

        if body.stream:

            async def events() -> AsyncIterator[dict[str, Any]]:
                def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    return {**head, "choices": [choice], **({"usage": None} if usage else {})}

                yield chunk({"role": "assistant", "content": ""}, None)
                async for piece in self._stream(gen, request):
                    if isinstance(piece, str):
                        yield chunk({"content": piece}, None)
                    else:
                        yield chunk({}, piece.finish_reason)
                        if usage:
                            yield {**head, "choices": [], "usage": piece.usage()}

            return sse_response(events())

        out = await self._complete(gen, request)
        message = {"role": "assistant", "content": out.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": out.finish_reason}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": out.usage()})

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self._require_ready()
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ServiceError(
                    400, f"prompt: exactly one prompt per request is supported, got {len(prompt)}", "invalid_value", "prompt"
                )
            prompt = prompt[0]
        usage = body.stream and include_usage(body)
        limit = body.max_tokens or self.options.default_max_tokens
        gen = await asyncio.to_thread(self._prepare, self._text_inputs, prompt, limit, body)
        rid, created = completion_id("cmpl"), now()
        head = {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        if body.stream:

            async def events() -> AsyncIterator[dict[str, Any]]:
                def chunk(text: str, finish: str | None) -> dict[str, Any]:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                    return {**head, "choices": [choice], **({"usage": None} if usage else {})}

                async for piece in self._stream(gen, request):
                    if isinstance(piece, str):
                        yield chunk(piece, None)
                    else:
                        yield chunk("", piece.finish_reason)
                        if usage:
                            yield {**head, "choices": [], "usage": piece.usage()}

            return sse_response(events())

        out = await self._complete(gen, request)
        choice = {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
        return JSONResponse({**head, "choices": [choice], "usage": out.usage()})

    # --- request preparation (runs in a thread: tokenizing a long prompt takes time) ----

    def _chat_inputs(self, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        if not self.tokenizer.chat_template:
            raise ServiceError(
                400, "this model has no chat template; use /v1/completions", "chat_not_supported", "messages"
            )
        try:
            return dict(
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
                )
            )
        except TemplateError as exc:  # e.g. a template that insists on alternating roles
            message = f"messages: rejected by the model's chat template: {exc}"
            raise ServiceError(400, message, "invalid_messages", "messages") from exc

    def _text_inputs(self, prompt: str) -> dict[str, torch.Tensor]:
        if not prompt:
            raise ServiceError(400, "prompt must not be empty", "invalid_value", "prompt")
        return dict(self.tokenizer(prompt, return_tensors="pt"))

    def _prepare(
        self,
        tokenize: Callable[[Any], dict[str, torch.Tensor]],
        source: Any,
        limit: int,
        body: CompletionRequest | ChatCompletionRequest,
    ) -> Generation:
        inputs = tokenize(source)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        max_context = self.options.max_context
        if prompt_tokens >= max_context:
            raise ServiceError(
                400,
                f"the prompt is {prompt_tokens} tokens, but this model's context is {max_context} tokens "
                "(prompt plus completion); shorten the prompt",
                "context_length_exceeded",
                "messages" if isinstance(body, ChatCompletionRequest) else "prompt",
            )
        temperature = self.options.default_temperature if body.temperature is None else body.temperature
        return Generation(
            inputs=inputs,
            # The completion is cut where the context ends (finish_reason "length").
            max_new_tokens=min(limit, max_context - prompt_tokens),
            temperature=temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop_list(body.stop),
        )

    # --- generation ---------------------------------------------------------

    def _generate(self, gen: Generation, streamer: AsyncTextIteratorStreamer | None) -> torch.Tensor:
        """Runs in the generate thread; returns the new token ids."""
        began = time.monotonic()
        new = torch.empty(0, dtype=torch.long)
        try:
            if gen.cancel.is_set():  # the client left while waiting its turn
                return new
            kwargs: dict[str, Any] = {"do_sample": False}
            if gen.temperature > 0:
                kwargs = {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p or 1.0}
            if gen.stop:
                kwargs.update(stop_strings=gen.stop, tokenizer=self.tokenizer)
            if gen.seed is not None:
                torch.manual_seed(gen.seed)  # global RNG: safe, this thread is the only user
            inputs = {k: v.to(self.model.device) for k, v in gen.inputs.items()}
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=gen.max_new_tokens,
                    stopping_criteria=StoppingCriteriaList([CancelCriteria(gen.cancel)]),
                    streamer=streamer,
                    pad_token_id=self.pad_token_id,
                    **kwargs,
                )
            new = output[0, gen.prompt_tokens :].cpu()
            return new
        finally:
            if streamer is not None:
                streamer.end()  # generate() does this too, but not when it raised or never ran
            seconds = time.monotonic() - began
            log_event(
                log,
                "generation cancelled" if gen.cancel.is_set() else "generation done",
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=len(new),
                seconds=round(seconds, 3),
                tokens_per_second=round(len(new) / seconds, 1) if seconds > 0 else None,
                cancelled=gen.cancel.is_set(),
            )

    def _outcome(self, gen: Generation, new: torch.Tensor, text: str, stopped: bool) -> Outcome:
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        ended = stopped or (len(new) > 0 and int(new[-1]) in eos_ids) or len(new) < gen.max_new_tokens
        return Outcome(text, "stop" if ended else "length", gen.prompt_tokens, len(new))

    async def _watch_client(self, request: Request, gen: Generation) -> None:
        # Starlette does not cancel a handler when its client leaves (and a
        # stream's generator may only be closed later), so we look ourselves.
        while not gen.cancel.is_set():
            if await request.is_disconnected():
                gen.cancel.set()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    async def _complete(self, gen: Generation, request: Request) -> Outcome:
        watcher = asyncio.create_task(self._watch_client(request, gen))
        try:
            future = asyncio.get_running_loop().run_in_executor(self._worker, self._generate, gen, None)
            # shield: a cancelled request must not cancel the queued job (it still
            # runs, sees gen.cancel and returns at once), it only stops waiting.
            new = await asyncio.shield(future)
        finally:
            gen.cancel.set()
            watcher.cancel()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = find_stop(text, gen.stop)
        return self._outcome(gen, new, text if cut is None else text[:cut], cut is not None)

    async def _stream(self, gen: Generation, request: Request) -> AsyncIterator[str | Outcome]:
        """Text pieces as generate() produces them, then the Outcome."""
        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        watcher = asyncio.create_task(self._watch_client(request, gen))
        future = asyncio.get_running_loop().run_in_executor(self._worker, self._generate, gen, streamer)
        scanner = StopScanner(gen.stop)
        parts: list[str] = []
        try:
            async for piece in streamer:
                text = scanner.feed(piece)
                if text:
                    parts.append(text)
                    yield text
                if scanner.hit:
                    gen.cancel.set()  # generate() normally stopped already; this makes sure
                    break
            if tail := scanner.flush():
                parts.append(tail)
                yield tail
            new = await asyncio.shield(future)
        finally:
            # Reached on normal end, and when the client went away and the
            # stream was cancelled or closed: generate() stops at its next token.
            gen.cancel.set()
            watcher.cancel()
        yield self._outcome(gen, new, "".join(parts), scanner.hit)


if __name__ == "__main__":
    TransformersService.main()
