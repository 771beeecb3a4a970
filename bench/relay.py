"""A counting TCP relay on 127.0.0.1, for byte counts that include TLS handshakes.

It sits between a client and a server and forwards both ways without decrypting, so what it
counts is what crosses the wire: TLS handshakes, record headers, session tickets, alerts.
`bench/wfm.py` measures the Margo 1.0 idle poll through it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from contextlib import suppress
from pathlib import Path

from tests.support.wait import wait_for

QUIET_S = 0.05  # nothing forwarded this long while the client is stopped: all of it counted


class CountingRelay:
    """TCP on 127.0.0.1 to `target`, one thread per direction of each connection; counts the
    bytes it forwards (up: margo-lite to the WFM, down: back) and the connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = self.down = self.connections = self.open = 0
        self.last = time.monotonic()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def __enter__(self) -> CountingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def counts(self) -> tuple[int, int, int]:
        """(bytes up, bytes down, connections) so far."""
        with self._lock:
            return self.up, self.down, self.connections

    def quiet(self) -> bool:
        """Nothing forwarded for QUIET_S: what was sent has been counted."""
        with self._lock:
            return time.monotonic() - self.last >= QUIET_S

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:  # the server has gone (its stage is over): the client sees a close
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self.open += 2  # one pump each way
                self._sockets += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    self.last = time.monotonic()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                self.open -= 1


def handshake_alone(relay: CountingRelay, ca: Path, cert: Path, key: Path) -> int:
    """Bytes of one mutual TLS handshake with stdlib ssl and the same SVIDs, then closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SVIDs carry a SPIFFE ID, no host name
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    up, down, _ = relay.counts()
    raw = socket.create_connection(("127.0.0.1", relay.port))
    with context.wrap_socket(raw) as tls:
        tls.do_handshake()
    wait_for(lambda: relay.open == 0, what="the relay to close the handshake's connection")
    up1, down1, _ = relay.counts()
    return (up1 - up) + (down1 - down)
