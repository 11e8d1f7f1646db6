"""settings.load_progress: a streamed request waiting for its model to load
gets its stream at once, with SSE comments until the model answers; errors
then arrive as a final error event."""

from __future__ import annotations

import asyncio
import time

import openai

from orchestrator.progress import AfterHeaders
from tests.conftest import fake_model

BODY = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_a_stream_waiting_for_a_load_gets_progress_comments_then_the_answer(orchestrator):
    orch = orchestrator(
        {"settings": {"load_progress": True},
         "models": {"slow": fake_model("--startup-delay 2.5"), "broken": fake_model("--fail-load")}}
    )
    with orch.client() as client:
        began = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
            headers_after = time.monotonic() - began
            text = "".join(response.iter_text())
        assert response.status_code == 200 and headers_after < 1.5  # not after the 2.5 s load
        lines = [line for line in text.split("\n\n") if line]
        comments = [line for line in lines if line.startswith(": loading model 'slow'")]
        assert len(comments) >= 2, text
        assert lines[-1] == "data: [DONE]" and any(line.startswith("data: {") for line in lines)

        # The openai SDK skips the comments.
        client_sdk = openai.OpenAI(base_url=orch.url + "/v1", api_key="unused")
        assert client.post("/admin/services/slow/unload").status_code == 200
        stream = client_sdk.chat.completions.create(model="slow", messages=BODY["messages"], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "echo: hi"

        # A ready model streams as usual: no comments.
        with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
            assert ": loading" not in "".join(response.iter_text())

        # A load that fails: the stream ends with the error as an event.
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "model": "broken"}) as response:
            text = "".join(response.iter_text())
        assert response.status_code == 200
        assert text.rstrip().endswith("}") and '"code":"model_load_failed"' in text.replace(" ", "")


def test_an_upstream_error_after_our_headers_becomes_an_error_event():
    sent = []

    async def send(message):
        sent.append(message)

    async def run():
        relay = AfterHeaders(send)
        await relay({"type": "http.response.start", "status": 400,
                     "headers": [(b"content-type", b"application/json")]})
        await relay({"type": "http.response.body",
                     "body": b'{"error": {"message": "bad", "type": "invalid_request_error", "param": "x", '
                             b'"code": "invalid_request"}}'})

    asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.body", "http.response.body"]
    assert sent[0]["body"].startswith(b'data: {"error":{"message":"bad"') and sent[1]["body"] == b""
