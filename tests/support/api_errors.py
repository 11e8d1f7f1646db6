"""The OpenAI error shape the services answer with, checked in one place."""

from __future__ import annotations

from typing import Any

import httpx


def assert_error(response: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    """The error body of response, after checking its status, param, code and that it says something."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert error["message"]
    return error
