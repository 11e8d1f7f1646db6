"""Generated files (images now, audio later) under expiring signed URLs.

A service writes what it generated under <state>/files/ and answers with
`modelyard-file:<relative path>` where the client expects a URL. The
orchestrator turns that into
`<base>/files/<path>?expires=<unix time>&signature=<hmac>` on the way out, and
serves GET /files/<path> only with a valid, unexpired signature. The key never
leaves the orchestrator (<state>/files.key, created once, mode 0600). Files
older than their URLs' lifetime are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from core.errors import ServiceError
from core.protocol import FILE_SCHEME

log = logging.getLogger("modelyard.files")

KEY_BYTES = 32
CLEANUP_MARGIN = 300.0  # seconds
MEDIA_TYPES = {".png": "image/png", ".wav": "audio/wav", ".jpg": "image/jpeg", ".webp": "image/webp"}


def load_or_create_key(path: Path) -> bytes:
    """The signing key at path, made on first use (readable by its owner only).
    Two orchestrators starting at once on one state directory end with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = b""
        if len(key) == KEY_BYTES:
            os.chmod(path, 0o600)
            return key
        if not key:
            try:  # O_EXCL: only one creator wins; the others read what it wrote
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                time.sleep(0.01)  # being written by the winner
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
            continue
        raise RuntimeError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key; remove it to make a new one")
    raise RuntimeError(f"{path} stayed incomplete; remove it to make a new one")


class SignedFiles:
    def __init__(self, root: Path, key: bytes, ttl: float) -> None:
        self.root = root
        self.key = key
        self.ttl = ttl
        self.longest_ttl = ttl  # files stay as long as any URL issued for them may be valid

    def set_ttl(self, ttl: float) -> None:
        """A reload: new URLs get ttl; those already issued keep theirs."""
        self.ttl = ttl
        self.longest_ttl = max(self.longest_ttl, ttl)

    def signature(self, path: str, expires: int) -> str:
        return hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, path: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl)
        # Signed as the route receives it (decoded); sent encoded.
        return f"{base}/files/{quote(path, safe='/')}?expires={expires}&signature={self.signature(path, expires)}"

    def resolve(self, path: str, expires: int, signature: str, now: float | None = None) -> Path:
        """The file a signed URL names: 403 for a wrong signature, 410 once expired, 404 when gone."""
        if not hmac.compare_digest(self.signature(path, expires).encode(), signature.encode()):
            raise ServiceError(403, "the URL's signature is not valid", code="invalid_signature")
        if (now if now is not None else time.time()) > expires:
            raise ServiceError(410, "the URL has expired; generate the file again", code="url_expired")
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            raise ServiceError(404, "the file is gone", code="file_not_found")
        return file

    def sign_answer(self, body: bytes, base: str) -> bytes:
        """A service's JSON answer with every `modelyard-file:` URL signed."""
        if FILE_SCHEME.encode() not in body:
            return body
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        items = answer.get("data") if isinstance(answer, dict) else None
        for item in items if isinstance(items, list) else []:
            url = item.get("url") if isinstance(item, dict) else None
            if isinstance(url, str) and url.startswith(FILE_SCHEME):
                item["url"] = self.url(base, url.removeprefix(FILE_SCHEME))
        return orjson.dumps(answer)

    def delete_expired(self, now: float | None = None) -> int:
        """Delete files whose URLs can no longer be valid; returns how many.
        A URL is signed a little after its file is written: CLEANUP_MARGIN covers that."""
        cutoff = (now if now is not None else time.time()) - self.longest_ttl - CLEANUP_MARGIN
        removed = 0
        for file in self.root.rglob("*"):
            try:
                if file.is_file() and file.stat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    async def clean_forever(self, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(min(interval, max(self.ttl, 1.0)))
            removed = await asyncio.to_thread(self.delete_expired)
            if removed:
                log.info("deleted %d expired generated file(s)", removed)


def base_url(scope: dict[str, Any], configured: str | None) -> str:
    """Where the client reached us: settings.public_url, else its Host header."""
    if configured:
        return configured.rstrip("/")
    host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
    if not host:
        server = scope.get("server") or ("127.0.0.1", 9000)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def build_files_router() -> APIRouter:
    router = APIRouter()

    @router.get("/files/{path:path}", include_in_schema=True)
    async def get_file(
        request: Request, path: str, expires: int = Query(...), signature: str = Query(..., pattern="^[0-9a-f]{64}$")
    ) -> FileResponse:
        """A generated file, for as long as its signed URL is valid."""
        files: SignedFiles = request.app.state.files
        file = files.resolve(path, expires, signature)
        return FileResponse(file, media_type=MEDIA_TYPES.get(file.suffix, "application/octet-stream"))

    return router
