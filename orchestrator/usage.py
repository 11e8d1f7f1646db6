"""What one answer used: tokens in and out, images, seconds of audio, and
GPU-seconds, read from what the service answered.

OpenAI-shaped answers say their usage: `usage.prompt_tokens` and
`completion_tokens` (chat, completions, embeddings), `data` (one item per
image), and our classifier's `usage.images`. A WAV answer says its length in
its header. A stream says its usage in a last event only when asked to
(`stream_options.include_usage`), so the endpoint asks for it on every
stream (ask_for_stream_usage) and, when the client had not asked,
StreamUsage drops that event again: the client sees the stream it asked for.

A stream the client left before its end has no usage event; it is counted
from what was sent (one token per content event, the usual granularity of
vLLM's streams) and the prompt from its text (4 characters a token; images
not counted), and marked estimated.
"""

from __future__ import annotations

import io
import re
import wave
from dataclasses import dataclass
from typing import Any

import orjson

STREAM_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
FINISH_REASON_TAIL = 16 * 1024  # the last choice's finish_reason follows its message: near the end
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z0-9_.-]{1,40})"')
BYTES_PER_TOKEN = 4  # the usual estimate for English text, when a count is missing


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    gpu_seconds: float = 0.0
    estimated: bool = False
    finish_reason: str | None = None  # the last choice's (stop, length, ...), for the drift feed

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def ask_for_stream_usage(payload: dict[str, Any]) -> bool:
    """Make a streamed chat or completion request ask for its usage event.
    True when the client had not asked itself (the event is theirs to drop)."""
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _from_usage(usage: Any, into: Usage) -> None:
    if isinstance(usage, dict):
        into.prompt_tokens = _int(usage.get("prompt_tokens"))
        into.completion_tokens = _int(usage.get("completion_tokens"))
        into.images = into.images or _int(usage.get("images"))
        seconds = usage.get("audio_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            into.audio_seconds = float(seconds)


def wav_seconds(data: bytes) -> float:
    """The length of a WAV file, from its header; 0 when it is not one."""
    try:
        with wave.open(io.BytesIO(data)) as audio:
            return audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError):
        return 0.0


def usage_of_answer(route: str, content_type: str, data: bytes) -> Usage:
    """The usage a whole (not streamed) successful answer reports."""
    found = Usage()
    if content_type.startswith("audio/"):
        found.audio_seconds = wav_seconds(data)
        return found
    if not content_type.startswith("application/json"):
        return found
    if route == "/v1/images/generations":  # images are counted from the answer's data
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return found
        if isinstance(answer, dict) and isinstance(answer.get("data"), list):
            found.images = len(answer["data"])
        return found
    _from_usage(usage_object(data), found)
    if route in STREAM_ROUTES:  # chat and completions have one; embeddings (megabytes, maybe) do not
        found.finish_reason = finish_reason_of(data[-FINISH_REASON_TAIL:])
    return found


def finish_reason_of(data: bytes) -> str | None:
    """The last "finish_reason" string in data (an answer, or stream events), found without parsing it."""
    at = data.rfind(b'"finish_reason"')
    while at >= 0:
        match = _FINISH.match(data, at)
        if match:
            return match.group(1).decode()
        at = data.rfind(b'"finish_reason"', 0, at)  # that one was null: an earlier choice may say
    return None


def usage_object(data: bytes) -> Any:
    """The top-level "usage" object of a JSON answer, found by scanning from
    its end (where engines put it) rather than parsing megabytes of
    embeddings; None when there is none."""
    at = len(data)
    while (at := data.rfind(b'"usage"', 0, at)) > 0:
        if data[at - 1 : at] == b"\\":  # an escaped quote: inside a string
            continue
        start = data.find(b"{", at + 7)
        if start < 0 or data[at + 7 : start].strip() != b":":
            continue
        depth = 0
        for end in range(start, min(len(data), start + 4096)):
            depth += {123: 1, 125: -1}.get(data[end], 0)  # { and }
            if depth == 0:
                try:
                    return orjson.loads(data[start : end + 1])
                except orjson.JSONDecodeError:
                    return None
        return None
    return None


# An event ends with an empty line; SSE allows \n, \r\n and \r line endings.
_EVENT = re.compile(rb"(.*?)(?:\r\n\r\n|\n\n|\r\r)", re.S)
_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
MAX_PENDING = 1024 * 1024  # an unfinished event longer than this is no SSE we know: pass the bytes on


class StreamUsage:
    """Watches a server-sent event stream pass: takes its usage event, and
    drops it when the client had not asked for one (strip=True).

    feed() takes the upstream's chunks and returns the bytes to send on:
    whole events only, so the usage event can be recognised and dropped even
    when it arrives split across chunks. Events without a usage object (the
    usual case) pass as they are, unparsed. A stream that is not SSE after
    all is passed on untouched once MAX_PENDING bytes pile up unfinished.
    """

    def __init__(self, strip: bool, prompt_estimate: int) -> None:
        self.strip = strip
        self.prompt_estimate = prompt_estimate  # tokens, for a stream that ends without its usage event
        self.usage: Usage | None = None
        self.events = 0  # content events sent, for the estimate
        self.given_up = False
        self.finish_reason: str | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.given_up:
            return chunk
        searched_from = max(0, len(self._pending) - 3)  # a terminator may straddle the old and new bytes
        data = self._pending + chunk
        end = max((data.rfind(mark, searched_from) + len(mark) if data.rfind(mark, searched_from) >= 0 else 0)
                  for mark in _ENDS)
        if end == 0:
            self._pending = data
            if len(data) > MAX_PENDING:
                self.given_up = True
                return self.rest()
            return b""
        self._pending = data[end:]
        whole = data[:end]
        if b'"finish_reason":"' in whole or b'"finish_reason": "' in whole:  # the last content event
            self.finish_reason = finish_reason_of(whole) or self.finish_reason
        if whole.count(b'"usage"') == whole.count(b'"usage":null') + whole.count(b'"usage": null'):
            self.events += whole.count(b"data:")  # the hot path: no usage object, pass the events on
            return whole
        return b"".join(event.group(0) for event in _EVENT.finditer(whole) if self._keep(event.group(1)))

    def rest(self) -> bytes:
        """Whatever is left when the stream ends (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data.startswith(b"{"):
            return True
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(parsed, dict):
            return True
        usage = parsed.get("usage")
        choices = parsed.get("choices")
        if isinstance(usage, dict):
            self.usage = Usage()
            _from_usage(usage, self.usage)
            if self.strip and choices == []:
                return False  # the event we asked for and the client did not
        if choices:
            self.events += 1
        return True

    def result(self) -> Usage:
        usage = self.usage or Usage(prompt_tokens=self.prompt_estimate, completion_tokens=self.events, estimated=True)
        usage.finish_reason = self.finish_reason
        return usage


def prompt_estimate(payload: dict[str, Any]) -> int:
    """Tokens of a chat or completion request's prompt: its text at
    BYTES_PER_TOKEN characters a token, token ids one each (images and other
    parts not counted). What a stream that ends early is charged."""
    chars, tokens = 0, 0
    prompt = payload.get("prompt")
    for item in [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int):  # a prompt of token ids
            tokens += 1
        elif isinstance(item, list):  # prompts of token ids
            tokens += len(item)
    for message in payload.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part["text"]) for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return tokens + chars // BYTES_PER_TOKEN
