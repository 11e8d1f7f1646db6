"""What the endpoint keeps of each request, besides metrics: an audit entry
(who asked which model, and what became of it; orchestrator/audit.py) and,
with settings.capture, the request and answer bodies, encrypted
(orchestrator/capture.py). Admin requests that change something, read
captured bodies or export the audit log are audited too.

Both stores only queue on the event loop; their own threads write.
"""

from __future__ import annotations

from typing import Any

from orchestrator.audit import AuditLog
from orchestrator.auth import Principal
from orchestrator.capture import CaptureStore

CLIENT_GONE = 499  # what an audit entry says when the client left before its answer was complete (nginx does too)
READ_PATHS_AUDITED = ("/admin/captures", "/admin/audit")  # reads that are themselves worth an entry
SIMULATOR_QUERIES = frozenset({"/simulator/run", "/simulator/node-configurations", "/simulator/benchmark-config"})


class BodyTap:
    """An ASGI send that passes everything on and notes what the client got:
    the status, the content type and the body (up to limit bytes)."""

    def __init__(self, send: Any, limit: int) -> None:
        self.send = send
        self.limit = limit
        self.status = 0
        self.content_type = "application/octet-stream"
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", []):
                if name == b"content-type":
                    self.content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body" and self.size < self.limit:
            chunk = message.get("body", b"")
            self.chunks.append(chunk[: self.limit - self.size])
            self.size += len(chunk)
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))  # past the limit: only counted
        await self.send(message)

    def body(self) -> bytes:
        return b"".join(self.chunks)


def _who(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"actor": "anonymous", "key_id": None, "tenant": None}
    return {"actor": principal.name, "key_id": principal.key_id, "tenant": principal.tenant}


class RequestLog:
    def __init__(self, audit: AuditLog | None, captures: CaptureStore | None, audit_requests: bool) -> None:
        self.audit = audit
        self.captures = captures
        self.audit_requests = audit_requests

    def tap(self, send: Any) -> Any:
        """send, watched when bodies are captured."""
        return BodyTap(send, self.captures.max_bytes) if self.captures is not None else send

    def model_request(self, route: str, request_id: bytes, principal: Principal | None, model: str, status: int,
                      body: bytes | None, tap: Any) -> None:
        """One request to a model route is over (status 499: the client left before its end)."""
        rid = request_id.decode()
        if self.audit is not None and self.audit_requests:
            self.audit.record("access", "request", **_who(principal), model=model or None, route=f"POST {route}",
                              status=status or CLIENT_GONE, request_id=rid)
        if self.captures is not None and body is not None and isinstance(tap, BodyTap):
            self.captures.save(request_id=rid, model=model or None, route=route,
                               key_id=principal.key_id if principal is not None else None,
                               status=status or CLIENT_GONE, request_body=body, response_body=tap.body(),
                               response_type=tap.content_type, response_size=tap.size)

    @staticmethod
    def audits_admin(method: str, path: str) -> bool:
        """Admin requests worth an entry: every change, and reads of captured bodies or of the log itself."""
        if not path.startswith(("/admin/", "/drift/", "/simulator/")) or path == "/drift/ingest":  # monitors are
            return False  # configuration; the events pushed into them are data
        if path in SIMULATOR_QUERIES:  # computations that change nothing (benchmark jobs and feedback do)
            return False
        return method not in ("GET", "HEAD", "OPTIONS") or path.startswith(READ_PATHS_AUDITED)

    def admin_request(self, method: str, path: str, request_id: bytes, principal: Principal | None, status: int,
                      detail: dict[str, Any] | None) -> None:
        if self.audit is not None:
            self.audit.record("admin", f"{method} {path}", **_who(principal), route=f"{method} {path}",
                              status=status or CLIENT_GONE, request_id=request_id.decode(), detail=detail)
