"""Usage, tokens and cost: what each answer used is counted per key and
model, priced at the model's prices, reported by period; token rate limits
and token quotas hold; a stream's usage is counted whether or not the client
asked for its usage event, and the client gets exactly the stream it asked for.

Through a real orchestrator and fake services (tests/support/fake_service.py
reports usage as vLLM does: prompt tokens are the last message's words,
completion tokens the answer's, "echo: <message>").
"""

from __future__ import annotations

import io
import json
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Prices
from orchestrator.accounting import Ledger, cost_of
from orchestrator.usage import (
    MAX_PENDING,
    StreamUsage,
    Usage,
    ask_for_stream_usage,
    prompt_estimate,
    usage_object,
    usage_of_answer,
    wav_seconds,
)
from tests.conftest import fake_model, wait_until
from tests.test_limits import create_key

PRICES = {"per_1k_prompt_tokens": 1.0, "per_1k_completion_tokens": 2.0, "per_request": 0.5}
FIVE_WORDS = "one two three four five"  # 5 prompt tokens; the answer "echo: one ... five" is 6


def chat(client: httpx.Client, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": "chat", "messages": [{"role": "user", "content": FIVE_WORDS}], **body}
    return client.post("/v1/chat/completions", json=payload, headers=headers)


def events(response: httpx.Response) -> list[Any]:
    found = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


def test_usage_and_cost_are_counted_per_key_and_model_and_reported_by_period(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin = create_key(state, "--role", "admin")
    member = create_key(state)
    config = {"settings": {"auth": {"enabled": True}, "currency": "EUR"},
              "models": {"chat": fake_model(prices=PRICES), "free": fake_model()}}
    orch = orchestrator(config, state_dir=state)
    with orch.client() as client:
        for _ in range(3):
            assert chat(client, member["key"]).status_code == 200
        assert chat(client, admin["key"], model="free").status_code == 200
        assert chat(client, member["key"], model="nope").status_code == 404  # never reached a model: not counted

        auth = {"Authorization": f"Bearer {admin['key']}"}
        report = client.get("/admin/usage", headers=auth).json()
        assert report["currency"] == "EUR" and report["group_by"] == ["key", "model"]
        rows = {(row["key"], row["model"]): row for row in report["rows"]}
        assert set(rows) == {(member["id"], "chat"), (admin["id"], "free")}
        mine = rows[(member["id"], "chat")]
        assert mine["key_name"] == "t"
        assert (mine["requests"], mine["prompt_tokens"], mine["completion_tokens"]) == (3, 15, 18)
        assert mine["cost"] == pytest.approx(3 * (5 / 1000 * 1.0 + 6 / 1000 * 2.0 + 0.5))
        assert rows[(admin["id"], "free")]["cost"] == 0
        assert report["total"]["requests"] == 4 and report["total"]["prompt_tokens"] == 20

        by_model = client.get("/admin/usage", params={"group_by": "model", "model": "chat"}, headers=auth).json()
        assert [row["model"] for row in by_model["rows"]] == ["chat"]
        later = client.get("/admin/usage", params={"since": time.time() + 7200}, headers=auth).json()
        assert later["rows"] == [] and later["total"]["requests"] == 0
        earlier = client.get("/admin/usage", params={"until": "2020-01-01"}, headers=auth).json()
        assert earlier["rows"] == []
        today = time.strftime("%Y-%m-%d", time.gmtime())
        daily = client.get("/admin/usage", params={"group_by": "day", "since": today}, headers=auth).json()
        assert [(row["day"], row["requests"]) for row in daily["rows"]] == [(today, 4)]

        for params, param in (({"group_by": "key,colour"}, "group_by"), ({"since": "yesterday"}, "since")):
            bad = client.get("/admin/usage", params=params, headers=auth)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param
        assert client.get("/admin/usage", headers={"Authorization": f"Bearer {member['key']}"}).status_code == 403

        metrics = client.get("/metrics", headers=auth).text
        assert 'modelyard_tokens_total{kind="prompt",model="chat"} 15.0' in metrics
        assert 'modelyard_tokens_total{kind="completion",model="chat"} 18.0' in metrics
    # Counted in memory, kept in usage.db: after a restart the report is the same.
    orch.stop()
    restarted = orchestrator(config, state_dir=state)
    with restarted.client() as client:
        again = client.get("/admin/usage", headers={"Authorization": f"Bearer {admin['key']}"}).json()
        assert again["total"]["requests"] == 4 and again["total"]["completion_tokens"] == 18 + 6


def test_a_stream_is_counted_and_the_client_gets_the_stream_it_asked_for(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model("--chunks 3")}})
    with orch.client() as client:
        plain = chat(client, stream=True)
        assert plain.status_code == 200
        sent = events(plain)
        assert sent[-1] == "[DONE]"
        # The orchestrator asked for the usage event; the client did not, so it never sees one.
        assert all(event["choices"] for event in sent[:-1]), sent
        assert "".join(e["choices"][0]["delta"]["content"] for e in sent[:-1]) == f"echo: {FIVE_WORDS}"

        asked = chat(client, stream=True, stream_options={"include_usage": True})
        last = events(asked)[-2]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6

        report = client.get("/admin/usage", params={"group_by": "model"}).json()
        assert report["rows"][0]["requests"] == 2
        assert report["rows"][0]["completion_tokens"] == 12 and report["rows"][0]["prompt_tokens"] == 10


def test_a_key_tokens_per_minute_limit_holds_back_the_requests_after_a_large_answer(orchestrator,
                                                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = create_key(state, "--tpm", "300")  # 5 tokens a second; one request here uses 11
    other = create_key(state)
    orch = orchestrator({"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model()}}, state_dir=state)
    with orch.client() as client:
        assert chat(client, key["key"]).status_code == 200
        limited = chat(client, key["key"])
        error = limited.json()["error"]
        assert limited.status_code == 429 and error["code"] == "rate_limited"
        assert "300 tokens per minute" in error["message"] and key["id"] in error["message"]
        assert 1 <= int(limited.headers["retry-after"]) <= 3  # 11 - 5 in debt, plus 1, at 5 a second: 1.4 s
        assert chat(client, other["key"]).status_code == 200  # another key's bucket is its own
        time.sleep(float(limited.headers["retry-after"]) + 0.3)
        assert chat(client, key["key"]).status_code == 200


def test_a_model_tokens_per_minute_limit_applies_to_every_client(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model(tpm=120)}})  # 2 tokens a second
    with orch.client() as client:
        assert chat(client).status_code == 200
        limited = chat(client)
        assert limited.status_code == 429 and "model chat" in limited.json()["error"]["message"]


def test_a_token_quota_stops_a_key_once_used_up_and_survives_a_restart(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = create_key(state, "--token-quota", "30/day", "--quota", "100/day")
    config = {"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model()}}
    orch = orchestrator(config, state_dir=state)
    with orch.client() as client:
        served = [chat(client, key["key"]).status_code for _ in range(4)]
        assert served == [200, 200, 200, 429]  # 11 tokens each: 33 >= 30 after three
        refused = chat(client, key["key"]).json()["error"]
        assert refused["code"] == "quota_exceeded" and "30 tokens per day" in refused["message"]
    orch.stop()
    restarted = orchestrator(config, state_dir=state)
    with restarted.client() as client:
        assert chat(client, key["key"]).status_code == 429


def test_the_cli_refuses_quotas_over_different_periods(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT
    done = subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(tmp_path), "create",
                           "--name", "x", "--quota", "10/day", "--token-quota", "100/month"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0 and "same period" in done.stderr


# --- the parts, without a server ---------------------------------------------------------------


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


def test_stream_usage_drops_the_usage_event_even_when_split_across_chunks() -> None:
    stream = sse({"choices": [{"delta": {"content": "a"}}], "usage": None},
                 {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, b"[DONE]")
    for cut in range(1, len(stream)):
        meter = StreamUsage(strip=True, prompt_estimate=25)
        out = meter.feed(stream[:cut]) + meter.feed(stream[cut:]) + meter.rest()
        assert out == sse({"choices": [{"delta": {"content": "a"}}], "usage": None}, b"[DONE]"), cut
        assert (meter.result().prompt_tokens, meter.result().completion_tokens) == (3, 1)
        assert not meter.result().estimated
    kept = StreamUsage(strip=False, prompt_estimate=25)
    assert kept.feed(stream) == stream


def test_stream_usage_reads_crlf_events_and_passes_what_is_not_sse() -> None:
    crlf = (b"data: " + json.dumps({"choices": [{"delta": {"content": "a"}}]}).encode() + b"\r\n\r\n"
            + b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}).encode()
            + b"\r\n\r\ndata: [DONE]\r\n\r\n")
    meter = StreamUsage(strip=True, prompt_estimate=0)
    out = b"".join(meter.feed(crlf[i : i + 7]) for i in range(0, len(crlf), 7)) + meter.rest()
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\r\n\r\n") and out.startswith(b"data: {")
    assert meter.result().completion_tokens == 1 and not meter.result().estimated
    endless = StreamUsage(strip=True, prompt_estimate=0)  # no event ever ends: the bytes still flow
    sent = b"".join(endless.feed(b"x" * 1000) for _ in range(MAX_PENDING // 1000 + 2))
    assert len(sent) == 1000 * (MAX_PENDING // 1000 + 2) and endless.given_up
    nulls = sse({"choices": [{"delta": {"content": "a"}}], "usage": None})  # no usage object: passed unparsed
    assert StreamUsage(strip=True, prompt_estimate=0).feed(nulls) == nulls


def test_stream_usage_estimates_a_stream_that_ended_without_its_usage_event() -> None:
    meter = StreamUsage(strip=True, prompt_estimate=100)
    meter.feed(sse(*({"choices": [{"delta": {"content": "x"}}]} for _ in range(7))))
    assert meter.result() == Usage(prompt_tokens=100, completion_tokens=7, estimated=True)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100000}}
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}, image]},
                            {"role": "assistant", "content": "y" * 8}]}
    assert prompt_estimate(payload) == 12  # 48 characters of text; the image is not counted
    assert prompt_estimate({"prompt": ["abcd", "efgh"]}) == 2
    assert prompt_estimate({"prompt": [101, 2023, 102]}) == 3 and prompt_estimate({"prompt": [[1, 2], [3]]}) == 3


def test_usage_of_whole_answers() -> None:
    chat_answer = json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}).encode()
    assert usage_of_answer("/v1/chat/completions", "application/json", chat_answer).tokens == 13
    images = json.dumps({"created": 1, "data": [{"url": "a"}, {"url": "b"}]}).encode()
    assert usage_of_answer("/v1/images/generations", "application/json", images).images == 2
    wav = io.BytesIO()
    with wave.open(wav, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0\0\0" * 24000)
    assert wav_seconds(wav.getvalue()) == pytest.approx(1.5)
    assert usage_of_answer("/v1/audio/generations", "audio/wav", wav.getvalue()).audio_seconds == pytest.approx(1.5)
    assert usage_of_answer("/v1/chat/completions", "application/json", b"not json") == Usage()
    # The usage object is found from the end; one quoted inside the generated text is not it.
    tricky = json.dumps({"choices": [{"text": 'say "usage": {"prompt_tokens": 99}'}],
                         "usage": {"prompt_tokens": 4, "completion_tokens": 1, "details": {"cached": 0}}}).encode()
    assert usage_object(tricky) == {"prompt_tokens": 4, "completion_tokens": 1, "details": {"cached": 0}}
    assert usage_object(json.dumps({"choices": [{"text": 'a "usage": {"x": 1}'}]}).encode()) is None
    hostile = json.dumps({"usage": {"prompt_tokens": -5, "completion_tokens": "9", "audio_seconds": True}}).encode()
    assert usage_of_answer("/v1/completions", "application/json", hostile) == Usage()


def test_cost_adds_every_price() -> None:
    prices = Prices(per_1k_prompt_tokens=2, per_1k_completion_tokens=4, per_image=0.1, per_audio_second=0.01,
                    per_gpu_second=0.001, per_request=1)
    usage = Usage(prompt_tokens=500, completion_tokens=250, images=3, audio_seconds=10, gpu_seconds=30)
    assert cost_of(usage, prices) == pytest.approx(1 + 1 + 0.3 + 0.1 + 0.03 + 1)


def test_ask_for_stream_usage_keeps_the_clients_other_options() -> None:
    payload: dict[str, Any] = {"stream_options": {"continuous_usage_stats": False}}
    assert ask_for_stream_usage(payload) is True
    assert payload["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert ask_for_stream_usage({"stream_options": {"include_usage": True}}) is False


def test_the_ledger_keeps_sums_by_hour_and_reports_them(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "usage.db")
    noon = 1_795_000_000.0  # some hour
    ledger.record("k1", "m", Usage(prompt_tokens=10), Prices(per_request=1), now=noon)
    ledger.record("k1", "m", Usage(prompt_tokens=5), Prices(per_request=1), now=noon + 3600)
    ledger.record("k2", "m", Usage(completion_tokens=7), Prices(), now=noon)
    ledger.flush()
    ledger.record("k1", "m", Usage(prompt_tokens=1), Prices(per_request=1), now=noon)  # adds to the stored row
    rows = ledger.report(None, None, ["key"])
    assert [(r["key"], r["requests"], r["prompt_tokens"], r["cost"]) for r in rows] == [
        ("k1", 3, 16, 3.0), ("k2", 1, 0, 0.0)]
    first_hour = ledger.report(noon, noon + 3600, ["hour"])
    assert len(first_hour) == 1 and first_hour[0]["requests"] == 3
    ledger.close()


def test_a_stream_the_client_leaves_is_charged_an_estimate_and_audited_as_499(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model("--chunks 40 --chunk-delay-ms 50")}})
    with orch.client() as client:
        assert chat(client).status_code == 200  # loaded
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": FIVE_WORDS}]}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            request_id = stream.headers["x-request-id"]
            received = next(stream.iter_bytes())
            assert received.startswith(b"data: ")
        # The client left after its first events: what was sent is counted, and marked as estimated.
        def estimated() -> list[dict[str, Any]]:
            rows = client.get("/admin/usage", params={"group_by": "model"}).json()["rows"]
            return rows if rows and rows[0]["estimated"] == 1 else []

        assert wait_until(lambda: bool(estimated()), 5)
        row = estimated()[0]
        assert row["requests"] == 2 and row["prompt_tokens"] == 5 + len(FIVE_WORDS) // 4
        assert 6 + 1 <= row["completion_tokens"] < 6 + 40  # some events, not the whole answer
        entries = client.get("/admin/audit", params={"format": "json"}).json()["entries"]
        left = [e for e in entries if e["request_id"] == request_id]
        assert [(e["status"], e["model"], e["actor"]) for e in left] == [(499, "chat", "anonymous")]


def test_gpu_seconds_are_the_time_held_times_the_gpus_and_priced(orchestrator) -> None:
    # A simulated inventory feeds the real scheduler: the service gets two GPUs, so each second it is held
    # counts twice. The fake answers after 300 ms.
    gpus = {"gpus": [{"name": "L4 (simulated)", "memory_gb": 24}] * 2, "gpu_reserve_gb": 0}
    model = fake_model("--response-delay-ms 300", memory_gb=30, gpus=2, prices={"per_gpu_second": 0.01})
    orch = orchestrator({"settings": gpus, "models": {"tp": model, "cpu": fake_model(gpus=0, memory_gb=1)}})
    with orch.client() as client:
        assert chat(client, model="tp").status_code == 200
        assert chat(client, model="cpu").status_code == 200
        rows = {r["model"]: r for r in client.get("/admin/usage", params={"group_by": "model"}).json()["rows"]}
    assert 0.6 <= rows["tp"]["gpu_seconds"] < 2.0  # 2 GPUs x at least 0.3 s
    assert rows["tp"]["cost"] == pytest.approx(rows["tp"]["gpu_seconds"] * 0.01, abs=1e-6)  # cost: 6 decimals
    assert rows["cpu"]["gpu_seconds"] == 0
