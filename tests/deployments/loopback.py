"""A loopback HTTP file server for deployment downloads: plain files, ``Range``, a connection cut
part way, and the Hugging Face hub's ``resolve`` URLs, so ``HF_ENDPOINT`` can point at it.

Real sockets and a real HTTP server (``http.server``) in a thread; it records every request so a
test can see the ``Range`` a resumed download sent.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["FileServer", "Served"]

_CHUNK = 256 * 1024


@dataclass
class Served:
    path: Path
    #: Close the connection after this many body bytes, on the first ``cut_times`` GETs.
    cut_after: int | None = None
    cut_times: int = 1
    #: Answer a ``Range`` request with the whole file (200), as a server without ranges does.
    ignore_range: bool = False
    status: int = 200
    #: A Content-Length to announce instead of the file's (a server that lies about the size).
    announce: int | None = None
    #: Seconds to wait between chunks of 256 KiB: a slow link, to act during a download.
    delay_s: float = 0.0
    gets: int = 0

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    #: Hub mirror: repo -> (commit, {filename: Served}).
    repos: dict[str, tuple[str, dict[str, Served]]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _find(self, path: str) -> tuple[Served | None, dict[str, str]]:
        path = path.split("?", 1)[0]
        if path in self.files:
            return self.files[path], {}
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.repos:
            commit, files = self.repos[m.group(1)]
            served = files.get(m.group(3))
            if served is not None:
                # What the hub sends for a file: the commit it resolved to and an ETag.
                return served, {"X-Repo-Commit": commit, "ETag": f'"{served.sha256}"'}
        return None, {}

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        server: FileServer = self.server.owner  # type: ignore[attr-defined]
        server.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        served, extra = server._find(self.path)
        if served is None or served.status != 200:
            code = 404 if served is None else served.status
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = served.path.read_bytes()
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if rng and not served.ignore_range:
            start = int(rng.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        length = served.announce if served.announce is not None else len(data) - start
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self._body(served, data, start)

    def _body(self, served: Served, data: bytes, start: int) -> None:
        served.gets += 1
        limit = len(data)
        if served.cut_after is not None and served.gets <= served.cut_times:
            limit = min(limit, start + served.cut_after)
        pos = start
        try:
            while pos < limit:
                end = min(limit, pos + _CHUNK)
                self.wfile.write(data[pos:end])
                pos = end
                if served.delay_s:
                    time.sleep(served.delay_s)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if limit < len(data):
            self.close_connection = True
            self.connection.shutdown(2)
