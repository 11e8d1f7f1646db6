"""A stand-in for the Hugging Face Hub's HTTP API, serving repositories from
local directories: enough of it for huggingface_hub's snapshot_download
(repo info, the file tree, file metadata and the files). The internet does not
exist here; the download code around it stays the real one.

    hub = FakeHub({"org/name": Path("dir")}); hub.start(); ... hub.url; hub.stop()
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one commit every repo has


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub.handle(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub.handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append(f"{request.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self.reply(request, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            root = self.repos[repo]
            if parts[4] == "revision":
                siblings = [{"rfilename": str(f.relative_to(root))} for f in self.files(repo)]
                info = {"id": repo, "sha": SHA, "siblings": siblings}
                return self.reply(request, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
            if parts[4] == "tree":
                tree = [
                    {"type": "file", "path": str(f.relative_to(root)), "size": f.stat().st_size, "oid": self.oid(f)}
                    for f in self.files(repo)
                ]
                return self.reply(request, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            if repo in self.repos:
                file = self.repos[repo] / "/".join(parts[4:])
                if file.is_file():
                    data = file.read_bytes()
                    headers = {
                        "X-Repo-Commit": SHA, "ETag": f'"{self.oid(file)}"', "Content-Type": "application/octet-stream"
                    }
                    return self.reply(request, 200, data, headers, body)
            return self.reply(request, 404, b"not found", {"X-Error-Code": "EntryNotFound"})
        self.reply(request, 404, b"not found")

    @staticmethod
    def oid(file: Path) -> str:
        return hashlib.sha1(file.read_bytes()).hexdigest()

    @staticmethod
    def reply(
        request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None,
        body: bool = True,
    ) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)
