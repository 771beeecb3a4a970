"""The part the simulators share: a threaded HTTP(S) server on 127.0.0.1 that records requests.

`wossim` (the draft WOS) and `wfmsim` (the Margo 1.0 WFM) subclass `SimServer` for the state
they hold and `SimHandler` for how they answer; the life of the server, reading bodies, the
request log, the "down" fault and sending answers live here once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Seen:
    """One request as a simulator received it, and what it answered."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    answer: int
    client: tuple[str, int] | None = None
    client_serial: int | None = None  # of the client certificate (mutual TLS)
    client_id: str | None = None  # its SPIFFE ID
    tls_version: str | None = None
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class SimServer:
    """Start with `with Sim(...) as sim:`; subclasses add their state and a `SimHandler`."""

    def __init__(
        self, handler: type[SimHandler], host: str, port: int, tls: ssl.SSLContext | None
    ) -> None:
        self.fault: str | None = None
        self._tls = tls  # read at every accept: it may be swapped while serving
        self._records: list[Seen] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), handler, self)
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self, path_prefix: str = "", method: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self._records
                if r.path.startswith(path_prefix) and (method is None or r.method == method)
            ]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._records.append(seen)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, sim: SimServer) -> None:
        self.sim = sim
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # An answer is two writes (head, body): without this, Nagle holds the body until the
        # client's delayed ACK (~40 ms) on a kept-alive connection; real servers set it too.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.sim._tls
        if tls is not None:  # handshake in the handler's thread, not the accept loop
            conn = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # else a client that went away
            super().handle_error(request, client_address)


class SimHandler(BaseHTTPRequestHandler):
    """Reads the request, records it and sends what `answer` returns."""

    protocol_version = "HTTP/1.1"
    server: _Server
    client_serial: int | None = None
    client_id: str | None = None
    tls_version: str | None = None

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the record is the log
        pass

    def handshake(self) -> bool:
        """Before the first request; False closes the connection unanswered."""
        return True

    def handle(self) -> None:
        if not self.handshake() or self.server.sim.fault == "down":
            return  # closed unanswered
        with contextlib.suppress(OSError):  # a client that went away (SSLError is an OSError)
            super().handle()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def answer(self, path: str, body: bytes) -> tuple[str, int, dict[str, str], bytes]:
        """(the path to record, status, headers, body) for one request."""
        raise NotImplementedError

    def _serve(self) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
        path = urllib.parse.urlsplit(self.path).path
        if sim.fault == "down":
            self.close_connection = True
            return
        path, status, headers, data = self.answer(path, body)
        sim._record(
            Seen(
                self.command,
                path,
                dict(self.headers.items()),
                body,
                status,
                self.client_address,
                self.client_serial,
                self.client_id,
                self.tls_version,
            )
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
