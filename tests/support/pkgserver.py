"""A real HTTPS file server on 127.0.0.1 for package tests, counting what it serves.

It answers GET for the files put into it, with an ETag (and optionally Last-Modified) and
"304 Not Modified" to matching conditional requests, so tests can count at the server
whether a package was downloaded again. Faults are switched per path: answer with given
statuses first, cut bodies short, send no Content-Length, redirect, hold the answer, or
trickle the body one byte at a time.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import http.server
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from tests.support.testca import TestCA

HOLD_LIMIT = 30.0  # a held answer is released by stop(), or after this many seconds


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: PackageServer

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.owner.tls is not None:  # handshake in the handler thread, not in accept
            sock = self.owner.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:
        """Clients that refuse the certificate or hang up are part of the tests: stay quiet."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        with owner.lock:
            owner.headers_seen[path].append({k.lower(): v for k, v in self.headers.items()})
            faults = owner.fail_first.get(path)
            status = faults.pop(0) if faults else None
            data = owner.files.get(path)
            redirect = owner.redirects.get(path)
        if path in owner.hold:
            owner.released.wait(HOLD_LIMIT)
        if redirect is not None:
            return self._answer(path, 302, b"", {"Location": redirect})
        if status is not None:
            return self._answer(path, status, b"")
        if data is None:
            return self._answer(path, 404, b"not found\n")
        etag = f'"{hashlib.sha256(data).hexdigest()[:20]}"'
        headers = {}
        if owner.etags:
            headers["ETag"] = etag
            if self.headers.get("If-None-Match") == etag:
                return self._answer(path, 304, b"", headers)
        if owner.last_modified:
            stamp = email.utils.formatdate(owner.mtimes[path], usegmt=True)
            headers["Last-Modified"] = stamp
            if self.headers.get("If-Modified-Since") == stamp and "If-None-Match" not in headers:
                return self._answer(path, 304, b"", headers)
        with owner.lock:
            cut = owner.cut_first.get(path, 0)
            owner.cut_first[path] = max(0, cut - 1)
        if cut:  # promise the whole body, send half of it, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            with owner.lock:
                owner.answers[path].append(-200)
            return
        if path in owner.trickle:
            return self._trickle(path, data, owner.trickle[path])
        self._answer(path, 200, data, headers, length=path not in owner.no_length)

    def _trickle(self, path: str, data: bytes, interval: float) -> None:
        """Promise the whole body, then send one byte every `interval` seconds: each read
        the client makes succeeds in time, the transfer never ends. Until the client hangs
        up, the body is sent, or stop()."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        owner = self.server.owner
        with owner.lock:
            owner.answers[path].append(200)
        self.close_connection = True
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                with owner.lock:
                    owner.body_bytes[path] += 1
                if owner.released.wait(interval):
                    return
        except OSError:  # the client gave up
            return

    def _answer(
        self, path: str, status: int, body: bytes, headers: dict | None = None, length=True
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if status not in (304,) and body:
            self.wfile.write(body)
        owner = self.server.owner
        with owner.lock:
            owner.answers[path].append(status)
            owner.body_bytes[path] += len(body) if status != 304 else 0


class PackageServer:
    """Start with `with PackageServer(ca) as server:`; `url(path)` gives a file's URL."""

    def __init__(self, ca: TestCA | None) -> None:
        self.tls: ssl.SSLContext | None = None
        if ca is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(ca.cert_file, ca.key_file)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self.etags = True
        self.last_modified = False
        self.fail_first: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self.no_length: set[str] = set()
        self.cut_first: dict[str, int] = {}  # path -> how many answers to cut short (as -200)
        self.hold: set[str] = set()
        self.trickle: dict[str, float] = {}  # path -> seconds between the bytes of its body
        self.released = threading.Event()
        self.answers: dict[str, list[int]] = collections.defaultdict(list)
        self.headers_seen: dict[str, list[dict]] = collections.defaultdict(list)
        self.body_bytes: collections.Counter[str] = collections.Counter()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def put(self, path: str, data: bytes) -> str:
        """Serve `data` at `path` (a new version when it was there before); returns its URL."""
        with self.lock:
            self.files[path] = data
            self.mtimes[path] = float(int(time.time()) + len(self.mtimes))
        return self.url(path)

    def downloads(self, path: str) -> int:
        """How many times the body of `path` was sent (200 answers)."""
        with self.lock:
            return self.answers[path].count(200)

    def requests(self, path: str) -> int:
        with self.lock:
            return len(self.answers[path])

    def start(self) -> PackageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=HOLD_LIMIT)

    def __enter__(self) -> PackageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_tree(root: Path) -> dict[str, bytes | str]:
    """{relative path: content, or "-> target" for links} of every file below `root`."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {path.readlink()}"
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found
