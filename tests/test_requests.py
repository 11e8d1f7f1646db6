"""What clients see: routing by model name and alias, the OpenAI wire format,
and precise 4xx errors for bad requests (never a 500, never a traceback)."""

from __future__ import annotations

import pytest

from tests.conftest import fake_model

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def orch(module_orchestrator):
    return module_orchestrator(
        {
            "settings": {"max_request_mb": 0.01},
            "models": {
                "chat-model": fake_model(aliases=["chatty"]),
                "renamed": fake_model(served_name="upstream-name"),
                "encoder": fake_model(type="embedding"),
            },
        }
    )


def test_models_lists_ids_types_and_aliases(orch):
    with orch.client() as client:
        body = client.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"chat-model", "renamed", "encoder"}
    assert by_id["chat-model"]["aliases"] == ["chatty"] and by_id["encoder"]["type"] == "embedding"


def test_chat_completions_and_embeddings_are_routed_by_model_and_alias(orch):
    with orch.client() as client:
        chat = client.post("/v1/chat/completions", json={"model": "chatty", "messages": MESSAGES})
        completion = client.post("/v1/completions", json={"model": "chat-model", "prompt": "say"})
        embedding = client.post("/v1/embeddings", json={"model": "encoder", "input": ["ab", "abcd"]})
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert chat.json()["model"] == "chat-model"  # the alias was resolved before forwarding
    assert completion.json()["choices"][0]["text"] == "echo: say"
    assert [d["embedding"][0] for d in embedding.json()["data"]] == [2.0, 4.0]


def test_served_name_is_what_the_upstream_receives(orch):
    with orch.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "renamed", "messages": MESSAGES})
    assert response.json()["model"] == "upstream-name"


def test_every_proxied_answer_carries_request_id_and_overhead(orch):
    with orch.client() as client:
        response = client.post(
            "/v1/chat/completions", json={"model": "chatty", "messages": MESSAGES}, headers={"x-request-id": "req-42"}
        )
    assert response.headers["x-request-id"] == "req-42"
    assert float(response.headers["x-modelyard-overhead-ms"]) >= 0
    assert float(response.headers["x-modelyard-load-ms"]) >= 0


@pytest.mark.parametrize(
    ("route", "body", "status", "code", "fragment"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, 404, "model_not_found", "'nope' does not exist"),
        ("/v1/chat/completions", {"messages": MESSAGES}, 400, "invalid_request", "missing required field 'model'"),
        ("/v1/chat/completions", {"model": "chatty"}, 400, "invalid_request", "'messages'"),
        ("/v1/chat/completions", {"model": "chatty", "messages": "hi"}, 400, "invalid_request", "messages"),
        ("/v1/chat/completions", {"model": 7, "messages": MESSAGES}, 400, "invalid_request", "model"),
        ("/v1/chat/completions", {"model": "chatty", "messages": [{"content": "x"}]}, 400, "invalid_request", "messages.0.role"),
        ("/v1/chat/completions", {"model": "chatty", "messages": MESSAGES, "max_tokens": -1}, 400, "invalid_request", "max_tokens"),
        ("/v1/chat/completions", {"model": "chatty", "messages": MESSAGES, "stream": "yes"}, 400, "invalid_request", "stream"),
        ("/v1/chat/completions", {"model": "chatty", "messages": MESSAGES, "temperature": 9}, 400, "invalid_request", "temperature"),
        ("/v1/completions", {"model": "chatty"}, 400, "invalid_request", "prompt"),
        ("/v1/completions", {"model": "chatty", "prompt": 42}, 400, "invalid_request", "prompt: "),
        ("/v1/embeddings", {"model": "encoder"}, 400, "invalid_request", "input"),
        ("/v1/embeddings", {"model": "chatty", "input": "x"}, 400, "wrong_model_type", "not served on /v1/embeddings"),
        ("/v1/chat/completions", {"model": "encoder", "messages": MESSAGES}, 400, "wrong_model_type", "embedding model"),
    ],
)
def test_bad_requests_get_precise_openai_errors(orch, route, body, status, code, fragment):
    with orch.client() as client:
        response = client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    if code == "invalid_request":  # param names the client's field, never a pydantic type tag
        assert error["param"] and "[" not in error["param"] and not error["param"].endswith((".str", ".int"))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{not json", "not valid JSON"), (b"", "empty"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object")],
)
def test_malformed_bodies_are_400(orch, raw, fragment):
    with orch.client() as client:
        response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_oversized_body_is_413_whether_declared_or_streamed(orch):
    big = {"model": "chatty", "messages": [{"role": "user", "content": "x" * 20_000}]}
    with orch.client() as client:
        declared = client.post("/v1/chat/completions", json=big)

        def chunks():
            yield b'{"model": "chatty", "messages": [{"role": "user", "content": "'
            for _ in range(30):
                yield b"x" * 1000
            yield b'"}]}'

        streamed = client.post("/v1/chat/completions", content=chunks())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"


def test_admin_errors_are_openai_shaped(orch):
    with orch.client() as client:
        missing = client.post("/admin/services/nope/load")
        bad_lines = client.get("/admin/services/chat-model/logs?lines=0")
        wrong_method = client.get("/v1/chat/completions")
        unknown_path = client.get("/v2/whatever")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert bad_lines.status_code == 400 and "lines" in bad_lines.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert unknown_path.status_code == 404 and "error" in unknown_path.json()


def test_admin_load_logs_and_listing(orch):
    with orch.client() as client:
        loaded = client.post("/admin/services/chat-model/load").json()
        logs = client.get("/admin/services/chat-model/logs?lines=50").json()
        listing = client.get("/admin/services").json()
    assert loaded["state"] == "ready" and loaded["pid"] > 0 and loaded["rss_bytes"] > 0
    assert any("modelyard: starting chat-model" in line for line in logs["lines"])
    row = next(s for s in listing["services"] if s["id"] == "chat-model")
    assert {"state", "pid", "port", "memory_gb", "uptime_s", "idle_s", "in_flight"} <= set(row)


def test_unusable_request_ids_are_replaced_not_fatal(orch):
    with orch.client() as client:
        for raw in (b"\xff\xfe-not-utf8", b"x" * 500, b"has space"):
            response = client.post(
                "/v1/chat/completions", json={"model": "chatty", "messages": MESSAGES}, headers={"x-request-id": raw}
            )
            assert response.status_code == 200
            assert len(response.headers["x-request-id"]) == 32  # a fresh one
