"""OpenAI-shaped error bodies: {"error": {"message", "type", "param", "code"}}.

Every process in modelyard reports errors this way so a client sees one format,
whether the orchestrator or an engine produced the error.
"""

from __future__ import annotations

from typing import Any

# The OpenAI "type" that goes with each status we emit.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
    507: "insufficient_resources",
}


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error response with the given HTTP status."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


class ServiceError(Exception):
    """An error that knows its HTTP status and OpenAI code.

    Raised anywhere below a request handler; the handler turns it into
    error_body(...) with the right status and no traceback.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        if self.status == 401:  # RFC 9110: a 401 names the scheme that would work
            headers["WWW-Authenticate"] = 'Bearer realm="modelyard"'
        return headers
