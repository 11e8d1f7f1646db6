"""Secrets never reach a log line: what core.logs.redact hides."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.logs import JsonFormatter, redact
from orchestrator import admin


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("vllm serve --api-key hunter2hunter2 --port 8000", "hunter2hunter2"),
        ("server --hf-token=hf_abcdefghijkl", "hf_abcdefghijkl"),
        ("server --password 's3cret'", "s3cret"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ('{"api_key": "abc123def456"}', "abc123def456"),
        ("key sk-proj-0123456789abcdef in a sentence", "0123456789abcdef"),
        ("token=xyz789xyz789", "xyz789xyz789"),
        # vLLM logs its arguments as a Python dict, api_key as a list of keys
        ("non-default args: {'api_key': ['first-key-1', 'second-key-2'], 'port': 8000}", "second-key-2"),
        ("non-default args: {'hf_token': 'hf_0123456789'}", "hf_0123456789"),
    ],
)
def test_secrets_are_redacted(text, secret):
    out = redact(text)
    assert secret not in out
    assert "[REDACTED]" in out


def test_ordinary_text_is_left_alone():
    text = "python server.py --port 8000 --model-path /models/x --max-tokens 16"
    assert redact(text) == text


def test_json_log_lines_redact_message_and_fields():
    record = logging.makeLogRecord({"msg": "calling with --api-key topsecret1", "levelno": 20, "levelname": "INFO"})
    record.fields = {"header": "Bearer abcdefghijkl", "count": 3}
    line = json.loads(JsonFormatter("test").format(record))
    assert "topsecret1" not in line["msg"] and "abcdefghijkl" not in line["header"]
    assert line["count"] == 3 and line["service"] == "test"


def test_a_services_last_log_lines_carry_no_secrets(tmp_path):
    # They go into the 503 a client gets when the service fails to start.
    from core.process import LaunchSpec, ServiceProcess

    process = ServiceProcess("m", LaunchSpec(argv=["true"], env={}, log_path=tmp_path / "m.log"))
    process.tail.extend(["starting", "non-default args: {'api_key': ['k-one-secret', 'k-two-secret']}", "failed"])
    tail = process.last_lines()
    assert "k-one-secret" not in tail and "k-two-secret" not in tail and "failed" in tail


@given(text=st.lists(st.sampled_from(["a", "é", "\n", "\r\n", " "]), max_size=300).map("".join),
       lines=st.integers(min_value=1, max_value=30), block=st.integers(min_value=1, max_value=64))
@settings(max_examples=200, deadline=None)
def test_tail_reads_the_same_last_lines_as_reading_the_whole_log(text, lines, block, tmp_path_factory):
    """tail_lines reads backwards in blocks (a log polled every second may be 10 MB); whatever the
    block boundaries, it gives what reading the whole file gives."""
    path = tmp_path_factory.mktemp("tail") / "service.log"
    path.write_bytes(text.encode("utf-8"))
    with path.open(encoding="utf-8", newline=None) as handle:
        expected = [line.rstrip("\n") for line in handle][-lines:]
    original = admin.TAIL_BLOCK
    admin.TAIL_BLOCK = block
    try:
        assert admin.tail_lines(path, lines) == expected
    finally:
        admin.TAIL_BLOCK = original


def test_tail_of_a_missing_log_is_empty(tmp_path):
    assert admin.tail_lines(tmp_path / "none.log", 10) == []
