"""A small Hugging Face hub on 127.0.0.1: real HTTP, the hub's routes and error headers.

It answers the two requests llmops makes of a hub, `GET /api/models/ORG/NAME` (HfApi.model_info)
and `GET /ORG/NAME/resolve/main/FILE` (a file), with the hub's own error codes (`X-Error-Code:
RepoNotFound`, `GatedRepo`), and counts every request, so a test can see that nothing is retried.
Point a subprocess at it with HF_ENDPOINT=hub.url.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    """Serves repos {id: {"files": {name: bytes}, "gated": bool}}; a repo {"fail_status": 503}
    answers every request about it with that status (a hub that is down for it)."""

    def __init__(self, repos: dict[str, dict[str, Any]]):
        self.repos = repos
        self.requests: Counter[str] = Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hub.requests[self.path] += 1
                status, headers, body = hub.answer(self.path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # polled every 0.05 s, so shutdown() returns at once (serve_forever's default: 0.5 s)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Returns (status, headers, body) for a request path, as the hub would."""
        path = path.split("?")[0]
        api = path.startswith("/api/models/")
        parts = path.removeprefix("/api/models/" if api else "/").split("/")
        repo_id = "/".join(parts[:2])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'
        if repo.get("fail_status"):
            return repo["fail_status"], {}, b"unavailable"
        if repo.get("gated"):
            return 403, {"X-Error-Code": "GatedRepo"}, b'{"error": "gated"}'
        if api:
            info = {"id": repo_id, "sha": "0" * 40,
                    "siblings": [{"rfilename": name} for name in repo["files"]]}
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        name = "/".join(parts[4:]) if parts[2:4] == ["resolve", "main"] else ""
        if name not in repo["files"]:
            return 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "Entry not found"}'
        return 200, {"Content-Type": "application/json"}, repo["files"][name]
