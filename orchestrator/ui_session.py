"""The dashboard's sign-in: a signed session cookie standing for an API key.

A person signs in at /ui/login with an API key; the orchestrator answers with
a cookie that holds the key's id, an expiry and an HMAC of both under a
secret of this host (<state>/ui.key). The key's secret itself is never in
the cookie. Each request re-reads the key, so revoking or expiring it ends
its sessions at once; the cookie's own expiry ends them otherwise.

The cookie is HttpOnly and SameSite=Strict, and a request it authorises that
changes something must also carry the header x-modelyard-ui (the dashboard's
scripts send it): a page of another site can make a browser send neither.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import cookie_parser

COOKIE = "modelyard_session"
CSRF_HEADER = b"x-modelyard-ui"
SESSION_TTL = 12 * 3600.0
_VERSION = "v1"
_DIGITS = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-f]{64}")


class UiSessions:
    def __init__(self, secret: bytes, ttl: float = SESSION_TTL) -> None:
        self._secret = secret
        self.ttl = ttl

    def _mac(self, key_id: str, expires: int) -> str:
        message = f"{_VERSION}.{key_id}.{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def issue(self, key_id: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl)
        return f"{_VERSION}.{key_id}.{expires}.{self._mac(key_id, expires)}"

    def key_id_of(self, value: str, now: float | None = None) -> str | None:
        """The key id a cookie value stands for; None if forged, malformed or expired."""
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        _, key_id, expires, mac = parts
        # ASCII digits and hex only: str.isdigit() takes "²", and compare_digest refuses non-ASCII text.
        if not (_DIGITS.fullmatch(expires) and _HEX.fullmatch(mac) and key_id.isascii()):
            return None
        if not hmac.compare_digest(mac, self._mac(key_id, int(expires))):
            return None
        if int(expires) <= (now if now is not None else time.time()):
            return None
        return key_id


def session_cookie(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The session cookie's value among a request's headers, if any. Starlette's
    lenient parser: http.cookies drops a whole header for one odd cookie of
    another site on the same host, and the session with it."""
    for name, value in headers:
        if name == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(COOKIE)
            if found:
                return found
    return None


def has_csrf_header(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == CSRF_HEADER for name, _ in headers)


def cookie_header(value: str, ttl: float, secure: bool) -> str:
    """Set-Cookie for a new session (ttl 0: the cookie is cleared)."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={value}; Max-Age={int(ttl)}; Path=/; HttpOnly; SameSite=Strict{flags}"


def is_dashboard_page(method: str, path: str) -> bool:
    """A page a person opens (not a part its scripts fetch): without a session it sends them to sign in."""
    return method == "GET" and (path == "/ui" or path.startswith("/ui/")) and not path.startswith("/ui/part/")


def login_url(path: str, query: bytes) -> str:
    target = path + ("?" + query.decode("latin-1") if query else "")
    return "/ui/login?" + urlencode({"next": target})


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of ours, never another site."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


async def send_redirect(send: Any, location: str, request_id: bytes) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                            (b"x-request-id", request_id)]})
    await send({"type": "http.response.body", "body": b""})
