"""A tiny Hugging Face Hub on 127.0.0.1 for tests: the real huggingface_hub client downloads from it.

It serves the few endpoints ``HfApi.model_info`` and ``snapshot_download`` use (repo info with file
sizes, file metadata by HEAD, file bodies with Range for resume), can throttle bodies so progress is
observable, and records the Authorization headers it receives (to prove tokens are sent, not stored).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path], bytes_per_second: float = 0.0, gated: tuple[str, ...] = ()):
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.bytes_per_second = bytes_per_second
        self.gated = set(gated)
        self.auth_headers: list[str] = []
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                return

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ helpers
    def files(self, repo_id: str) -> list[Path]:
        root = self.repos[repo_id]
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def total_bytes(self, repo_id: str) -> int:
        return sum(p.stat().st_size for p in self.files(repo_id))

    @staticmethod
    def _etag(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def _send_json(self, h, code: int, data, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _error(self, h, code: int, error_code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "0" if head else str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    # ------------------------------------------------------------------ routing
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        auth = h.headers.get("Authorization")
        if auth:
            self.auth_headers.append(auth)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 5 and parts[4] == "tree":
            return self._tree(h, "/".join(parts[2:4]), head)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            return self._repo_info(h, repo_id, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = "/".join(parts[:2])
            return self._file(h, repo_id, "/".join(parts[4:]), head)
        self._error(h, 404, "EntryNotFound", "not found", head)

    def _repo_info(self, h, repo_id: str, head: bool) -> None:
        if repo_id not in self.repos:
            return self._error(h, 401, "RepoNotFound", "Repository not found", head)
        if repo_id in self.gated and not h.headers.get("Authorization"):
            return self._error(h, 401, "GatedRepo", "Access to model is restricted", head)
        siblings = [{"rfilename": str(p.relative_to(self.repos[repo_id])), "size": p.stat().st_size,
                     "blobId": self._etag(p)[:40]} for p in self.files(repo_id)]
        self._send_json(h, 200, {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False,
                                 "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

    def _tree(self, h, repo_id: str, head: bool) -> None:
        if repo_id not in self.repos:
            return self._error(h, 404, "RepoNotFound", "Repository not found", head)
        entries = [{"type": "file", "path": str(p.relative_to(self.repos[repo_id])), "size": p.stat().st_size,
                    "oid": self._etag(p)[:40]} for p in self.files(repo_id)]
        self._send_json(h, 200, entries)

    def _file(self, h, repo_id: str, name: str, head: bool) -> None:
        if repo_id not in self.repos:
            return self._error(h, 401, "RepoNotFound", "Repository not found", head)
        if repo_id in self.gated and not h.headers.get("Authorization"):
            return self._error(h, 401, "GatedRepo", "Access to model is restricted", head)
        path = self.repos[repo_id] / name
        if not path.is_file():
            return self._error(h, 404, "EntryNotFound", "Entry not found", head)
        data = path.read_bytes()
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("ETag", f'"{self._etag(path)}"')
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if head:
            return
        chunk = 16 * 1024
        try:
            for i in range(0, len(body), chunk):
                h.wfile.write(body[i:i + chunk])
                if self.bytes_per_second:
                    time.sleep(chunk / self.bytes_per_second)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (a cancelled download)
