"""OpenTelemetry tracing of the model routes (settings.tracing; off by default).

Each request to a model becomes a server span (continuing the client's trace
when it sends a W3C `traceparent`), with child spans for the steps where
time goes: `auth`, `route` (the model's name to its service), `model.acquire`
(loading it, or waiting for memory or a slot) and `upstream` (the call to
the service, whose headers carry the trace on). Every span has the request
id (`modelyard.request_id`). Spans leave in batches through OTLP over HTTP (opentelemetry-sdk's
exporter) to settings.tracing.endpoint, a collector such as the
OpenTelemetry Collector, Jaeger or Tempo.

Off, every call here is a shared no-op context manager: nothing is imported,
nothing allocated per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import TracingSettings

_OFF = contextlib.nullcontext()


class Tracing:
    def __init__(self, settings: TracingSettings | None) -> None:
        self.enabled = settings is not None and settings.enabled
        self._provider: Any = None
        if not self.enabled:
            return
        assert settings is not None
        # Imported only when on: the SDK and its exporter cost startup time and memory.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=settings.resolved_headers(), timeout=10)
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=int(settings.export_interval * 1000)))
        self._tracer = self._provider.get_tracer("modelyard.orchestrator")
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR

    @contextlib.contextmanager
    def _request(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
                 request_id: bytes) -> Iterator[Any]:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
                   if name in (b"traceparent", b"tracestate")}
        parent = self._propagator.extract(carrier)
        attributes = {"http.request.method": method, "url.path": path, "modelyard.request_id": request_id.decode()}
        with self._tracer.start_as_current_span(f"{method} {path}", context=parent, kind=self._server,
                                                attributes=attributes) as span:
            yield span

    def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]], request_id: bytes) -> Any:
        """The server span of one request (its steps' spans nest in it)."""
        return self._request(method, path, headers, request_id) if self.enabled else _OFF

    def step(self, name: str, request_id: bytes, model: str | None = None) -> Any:
        """A child span of the current request: auth, route, model.acquire, upstream.
        A refusal raised inside (a 401, a 404) is the request's answer, not the
        step's failure: the server span carries the status."""
        if not self.enabled:
            return _OFF
        attributes = {"modelyard.request_id": request_id.decode()}
        if model is not None:
            attributes["modelyard.model"] = model
        return self._tracer.start_as_current_span(name, attributes=attributes, record_exception=False,
                                                  set_status_on_exception=False)

    def finish(self, span: Any, status: int, model: str) -> None:
        """Note the answer's status (5xx: an error; 499: the client left first) and the model on the request's span."""
        if span is None or not self.enabled:
            return
        span.set_attribute("http.response.status_code", status)
        if model:
            span.set_attribute("modelyard.model", model)
        if status >= 500:
            span.set_status(self._status(self._error))

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """headers plus the current span's traceparent, for the upstream call."""
        if self.enabled:
            self._propagator.inject(headers)
        return headers

    def shutdown(self) -> None:
        """Send the spans still queued."""
        if self._provider is not None:
            self._provider.shutdown()
