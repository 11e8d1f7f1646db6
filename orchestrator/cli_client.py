"""The `modelyard` command's connection to a running orchestrator's admin API:
one httpx client, and every way a call can fail turned into a CliError with
a message for a person (never a traceback, never the API key)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

START_HINT = "is it running? scripts/start-all.sh"


class CliError(Exception):
    """A failure to report and exit 1 for. `body` is what --json prints."""

    def __init__(self, message: str, body: dict[str, Any] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body if body is not None else {"error": {"message": message, "code": code}}


class ApiError(CliError):
    """The orchestrator answered with an error: its status, code and message."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"{message} ({code or 'error'}, HTTP {status})",
                         {"error": {"message": message, "code": code, "status": status}})
        self.status = status
        self.code = code
        self.reason = message


def error_of(response: httpx.Response) -> ApiError:
    """The OpenAI-shaped `{"error": {"message", "code"}}` body, or the bare
    text when something else (a proxy, a crash) answered."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(response.status_code, error.get("code"), str(error["message"]))
    text = " ".join(response.text.split())[:300] or response.reason_phrase
    return ApiError(response.status_code, None, text)


def segment(value: str) -> str:
    """One path segment: a key id or monitor name with / or ? in it stays one."""
    return quote(value, safe="")


def model_path(model_id: str) -> str:
    # The admin routes take model ids with slashes (org/model) as they are.
    return quote(model_id, safe="/")


class AdminClient:
    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: dict[str, Any] | None = None, wait: bool = False) -> Any:
        """The answer's JSON; CliError for anything else. wait: no read
        timeout (a load or a drain the orchestrator itself bounds)."""
        timeout = httpx.Timeout(self.timeout, read=None) if wait else self.timeout
        try:
            response = self.http.request(method, path, params=params, json=body, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise CliError(f"cannot reach the orchestrator at {self.url} ({START_HINT})",
                           code="orchestrator_unreachable") from None
        except httpx.TimeoutException:
            raise CliError(f"the orchestrator at {self.url} did not answer within {self.timeout:g} s "
                           "(--timeout to wait longer)", code="orchestrator_timeout") from None
        except httpx.HTTPError as exc:
            raise CliError(self.redact(f"talking to the orchestrator at {self.url} failed: "
                                       f"{type(exc).__name__}: {exc}")) from None
        if response.status_code >= 400:
            raise self.redacted(error_of(response))
        try:
            return response.json()
        except ValueError:
            raise CliError(f"the orchestrator at {self.url} answered {path} with something other than "
                           "JSON (is that URL a modelyard orchestrator?)") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    def redact(self, text: str) -> str:
        """The key must never reach a terminal or a CI log, even echoed back (as is, or escaped)."""
        if not self.api_key:
            return text
        for form in (self.api_key, repr(self.api_key)[1:-1], repr(self.api_key.encode())[2:-1]):
            text = text.replace(form, "[REDACTED]")
        return text

    def redacted(self, error: ApiError) -> ApiError:
        if not self.api_key or self.api_key not in error.message:
            return error
        return ApiError(error.status, error.code, self.redact(error.reason))
