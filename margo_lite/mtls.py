"""Connection pools for every Margo 1.0 WFM call: mutual TLS and the WFM's SPIFFE identity.

The device presents its X.509-SVID (`wos.client_cert`, `wos.client_key`) and verifies the
WFM's chain against the trust bundle (`wos.ca_file`), TLS 1.3 preferred and 1.2 the least.
DNS names play no part (an SVID's identity is its SPIFFE ID, not a host name): after each
handshake, before the connection is handed back to send anything, the WFM's certificate must
carry exactly one URI SAN, equal to `wos.server_id` or, unset, to the WFM named by the
device's own SVID. Any other peer is disconnected with `ServerIdentityError`.

The hook is urllib3's own extension point in both 1.26 and 2.x: a pool class whose
`ConnectionCls.connect()` runs the check after the TLS handshake; urllib3 calls `connect()`
before it writes the request, for direct and CONNECT-tunnelled connections alike.

Rotation without restart: before every request the certificate and key files are compared by
device, inode, mtime and size with what was loaded; when they changed, they are loaded into
a fresh TLS context and the old pools are closed, so the next call handshakes with the new
certificate. A half-done rotation (a certificate whose key is not there yet) keeps the old
one in use and is tried again when the files change again.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from margo_lite import logs, proxy, svid
from margo_lite.pools import Pools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

Stamp = tuple[tuple[int, int, int, int] | None, ...]


class ServerIdentityError(ssl.SSLError):
    """The WFM's certificate is not the expected SPIFFE ID: nothing was sent to it."""

    code = "WFM_SERVER_ID_MISMATCH"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "WFM identity refused"


def identity_pool_class(expected: str, seen: Callable[[str], None] | None = None) -> type:
    """An https pool class whose connections check the peer's SPIFFE ID right after the
    handshake. `seen` is told each identity verified (tests, bench)."""

    class SpiffeConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sock: Any = self.sock
            try:
                der = sock.getpeercert(binary_form=True) if sock is not None else None
                found = svid.check_peer(der or b"", expected)
            except svid.SvidError as exc:
                self.close()
                raise ServerIdentityError(f"WFM identity refused: {exc}") from None
            if seen is not None:
                seen(found)

    class SpiffePool(HTTPSConnectionPool):
        ConnectionCls = SpiffeConnection

    return SpiffePool


def client_context(base: ssl.SSLContext, ca_file: str | None) -> ssl.SSLContext:
    """`base` (which holds the client certificate) set up to verify the WFM."""
    base.minimum_version = ssl.TLSVersion.TLSv1_2
    base.check_hostname = False  # identity is the SPIFFE ID, checked after the handshake
    base.verify_mode = ssl.CERT_REQUIRED
    if ca_file:
        base.load_verify_locations(ca_file)
    else:
        base.load_default_certs()
    return base


class WfmPools:
    """Looks like `pools.Pools` (`request`, `urlopen`, `headers`, `clear`); see the module."""

    def __init__(
        self,
        cert_file: str,
        key_file: str | None,
        ca_file: str | None,
        *,
        server_id: str | None = None,
        proxies: proxy.Settings = proxy.DIRECT,
        headers: dict[str, str] | None = None,
        source: str = "",
        **pool_kw: Any,
    ) -> None:
        self.files = svid.Files(cert_file, key_file)
        self.headers = dict(headers or {})
        self._ca_file = ca_file
        self._server_id = server_id
        self._proxies = proxies
        self._pool_kw = pool_kw
        self._source = source
        self._lock = threading.Lock()
        self.own_id = ""
        self.server_id = ""
        self.loads = 0  # how many times the SVID was (re)loaded
        self._stamp: Stamp = ()
        self._pools: Pools | None = None
        self._refresh()  # a bad SVID at start is a configuration error (SvidConfigError)

    # --- the files ----------------------------------------------------------------------

    def _stamp_now(self) -> Stamp:
        found = []
        for path in (self.files.cert, self.files.key):
            if path is None:
                continue
            try:
                st = os.stat(path)
            except OSError:
                found.append(None)
                continue
            found.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(found)

    def _refresh(self) -> Pools:
        with self._lock:
            stamp = self._stamp_now()
            if self._pools is not None and stamp == self._stamp:
                return self._pools
            self._stamp = stamp
            try:
                own, context = svid.load_identity(self.files, source=self._source)
                expected = svid.expected_server(own, self._server_id, source=self._source)
                context = client_context(context, self._ca_file)
            except (svid.SvidConfigError, ssl.SSLError, OSError) as exc:
                if self._pools is None:
                    raise
                log.warning("the changed client certificate is not used (yet): %s", exc)
                return self._pools
            if svid.key_is_loose(self.files):
                log.warning(
                    "%s is readable by others: make it mode 0600", self.files.key or self.files.cert
                )
            old, self._pools = self._pools, self._build(context, expected)
            self.own_id, self.server_id = own, expected
            self.loads += 1
            if old is not None:
                old.clear()
                log.info("client certificate changed on disk: new connections present it")
            return self._pools

    def _build(self, context: ssl.SSLContext, expected: str) -> Pools:
        return Pools(
            self._proxies,
            headers=self.headers,
            https_pool_cls=identity_pool_class(expected),
            ssl_context=context,
            assert_hostname=False,
            **self._pool_kw,
        )

    # --- the Pools surface -----------------------------------------------------------------

    def urlopen(self, method: str, url: str, **kw: Any) -> urllib3.HTTPResponse:
        return self._refresh().urlopen(method, url, **kw)

    def request(self, method: str, url: str, **kw: Any) -> urllib3.HTTPResponse:
        """Like `Pools.request`; the pools' headers (User-Agent) under the caller's."""
        kw["headers"] = {**self.headers, **(kw.get("headers") or {})}
        return self._refresh().urlopen(method, url, **kw)

    def clear(self) -> None:
        with self._lock:
            if self._pools is not None:
                self._pools.clear()

    def __enter__(self) -> WfmPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def identity_error(exc: BaseException) -> ServerIdentityError | None:
    """The ServerIdentityError somewhere inside what urllib3 raised, if any."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if isinstance(current, ServerIdentityError):
            return current
        if any(current is s for s in seen):
            continue
        seen.append(current)
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__]
        inner += [a for a in current.args if isinstance(a, BaseException)]
        todo.extend(e for e in inner if isinstance(e, BaseException))
    return None
