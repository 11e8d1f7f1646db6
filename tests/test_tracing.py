"""OpenTelemetry tracing through a real orchestrator: with settings.tracing
on, a request to a model arrives at an OTLP/HTTP collector (a tiny one here,
decoding the real protobuf) as a server span continuing the client's trace,
with child spans for auth, routing, acquiring the model and the upstream
call, all carrying the request id; the service got the trace's context."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import fake_model, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP traces endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.service_names: set[str] = set()
        self.tokens: set[str | None] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                owner.tokens.add(self.headers.get("x-collector-token"))
                body = self.rfile.read(int(self.headers["content-length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource_spans in export.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            owner.service_names.add(attribute.value.string_value)
                    for scope_spans in resource_spans.scope_spans:
                        owner.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"


def attributes(span: Any) -> dict[str, Any]:
    found = {}
    for attribute in span.attributes:
        value = attribute.value
        found[attribute.key] = value.string_value if value.HasField("string_value") else value.int_value
    return found


def test_a_request_is_traced_from_the_client_to_the_service(orchestrator) -> None:
    collector = Collector()
    try:
        tracing = {"enabled": True, "endpoint": collector.url, "export_interval": 0.2, "service_name": "yard-test",
                   "headers": {"x-collector-token": "${MODELYARD_TEST_COLLECTOR_TOKEN}"}}
        orch = orchestrator({"settings": {"tracing": tracing}, "models": {"chat": fake_model()}},
                            extra_env={"MODELYARD_TEST_COLLECTOR_TOKEN": "t0ken"})
        with orch.client() as client:
            answer = client.post("/v1/chat/completions", json={"model": "chat", "messages": [
                {"role": "user", "content": "hi"}]}, headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
            assert answer.status_code == 200
            request_id = answer.headers["x-request-id"]
            missing = client.post("/v1/chat/completions", json={"model": "nope", "messages": [
                {"role": "user", "content": "hi"}]})
            assert missing.status_code == 404
            assert wait_until(lambda: len(collector.spans) >= 8, 10), [s.name for s in collector.spans]
        ours = [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]
        by_name = {s.name: s for s in ours}
        assert set(by_name) == {"POST /v1/chat/completions", "auth", "route", "model.acquire", "upstream"}
        server = by_name["POST /v1/chat/completions"]
        assert server.parent_span_id.hex() == CLIENT_SPAN  # the client's trace goes on
        assert attributes(server)["modelyard.request_id"] == request_id
        assert attributes(server)["http.response.status_code"] == 200
        assert attributes(server)["modelyard.model"] == "chat"
        for step in ("auth", "route", "model.acquire", "upstream"):
            assert by_name[step].parent_span_id == server.span_id, step
            assert attributes(by_name[step])["modelyard.request_id"] == request_id, step
        assert attributes(by_name["upstream"])["modelyard.model"] == "chat"
        assert collector.service_names == {"yard-test"} and collector.tokens == {"t0ken"}
        # A request without a traceparent starts a trace of its own; a 404 has no acquire or upstream span.
        others = [s for s in collector.spans if s.trace_id.hex() != TRACE_ID]
        assert {s.name for s in others} == {"POST /v1/chat/completions", "auth", "route"}
        assert attributes(next(s for s in others if s.name.startswith("POST")))["http.response.status_code"] == 404
    finally:
        collector.server.shutdown()


def test_a_collector_header_naming_an_unset_variable_stops_the_start(tmp_path) -> None:
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"settings": {"tracing": {"enabled": True, "headers": {
        "authorization": "Bearer ${MODELYARD_TEST_UNSET_TOKEN}"}}}, "models": {}}))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(path), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "${MODELYARD_TEST_UNSET_TOKEN} is not set" in done.stderr
