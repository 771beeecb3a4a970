"""The one place margo-lite builds urllib3 connection pools: direct, or through the site proxy.

Git smart HTTP, the WOS client and onboarding, and package downloads (OCI registry pulls
among them) all get their pools here, so every transport honours `network.*` (and the proxy
environment variables) the same way.

`Pools` looks like the urllib3 `PoolManager` the transports used before (`request`,
`urlopen`, `headers`, `clear`, a context manager) and picks, per URL, a direct pool manager
or a `ProxyManager` for the proxy `proxy.Settings` names. Through the proxy, plain http is
forwarded and https is tunnelled with CONNECT: TLS (server certificate, host name, and a
client certificate for mTLS) is between margo-lite and the origin, never the proxy. The
proxy's credentials go in a Proxy-Authorization header to the proxy only.

A proxy that cannot be reached or refuses the credentials (407) raises `ProxyError`
(PROXY_UNREACHABLE, PROXY_AUTH_FAILED) naming the proxy, its password masked; everything
else raises what urllib3 raises, for the transport to code: `failure` and `short_reason`
give every transport the same words for it.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path

import urllib3
from urllib3.util.ssl_ import create_urllib3_context

from margo_lite import logs, proxy
from margo_lite.config import NetworkConfig
from margo_lite.errors import ConfigError, ProxyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

MAX_PASSWORD_BYTES = 4096
_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*")


def settings_from(
    cfg: NetworkConfig, environ: Mapping[str, str], *, source: str = ""
) -> proxy.Settings:
    """The proxy settings of a configuration's `network` section and the environment; reads
    the password file. Raises ConfigError naming the key or variable."""
    password = _read_password(cfg.proxy_password_file, source) if cfg.proxy_password_file else None
    try:
        settings = proxy.resolve(cfg.proxy, cfg.no_proxy, cfg.proxy_from_env, environ, password)
    except ValueError as exc:
        raise ConfigError(f"{exc} (or set network.proxy_from_env: false)", source=source) from None
    if password is not None and not any(p and p.user for p in (settings.http, settings.https)):
        raise ConfigError(
            "a password needs a user: http://user@host:port in network.proxy",
            source=source,
            key="network.proxy_password_file",
        )
    return settings


def _read_password(path: str, source: str) -> str:
    key = "network.proxy_password_file"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PASSWORD_BYTES + 1)
        loose = Path(path).stat().st_mode & 0o077
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=source, key=key) from None
    password = raw.decode("utf-8", "replace").strip("\r\n")
    logs.register_secret(password)
    if not password or len(raw) > MAX_PASSWORD_BYTES or "\n" in password:
        raise ConfigError(f"{path} does not hold one password line", source=source, key=key)
    if loose:
        log.warning("%s is readable by others: make it mode 0600", path)
    return password


class Pools:
    """Connection pools for one client, each request routed direct or through its proxy.

    `pool_kw` goes to urllib3 as is (timeout, retries, maxsize, num_pools); `ca_file` or
    `ca_data` (PEM) is what the origin's certificate must chain to (default: the system
    store); `verify=False` only for onboarding's first download of the WOS CA, whose
    fingerprint is checked instead; `cert_file` / `key_file` are a client certificate;
    `https_pool_cls` replaces urllib3's https pool class (direct and tunnelled alike: the
    WFM's identity check in `margo_lite.mtls` hooks the connection there).
    """

    def __init__(
        self,
        settings: proxy.Settings = proxy.DIRECT,
        *,
        ca_file: str | None = None,
        ca_data: str | None = None,
        verify: bool = True,
        cert_file: str | None = None,
        key_file: str | None = None,
        headers: Mapping[str, str] | None = None,
        https_pool_cls: type | None = None,
        **pool_kw: Any,
    ) -> None:
        self.settings = settings
        self._https_pool_cls = https_pool_cls
        self.headers = dict(headers or {})
        self._kw = {**pool_kw, **_tls(ca_file, ca_data, verify), "headers": self.headers}
        if cert_file:
            self._kw.update(cert_file=cert_file, key_file=key_file)
        self._managers: dict[proxy.Proxy | None, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def manager(self, url: str) -> tuple[urllib3.PoolManager, proxy.Proxy | None]:
        """The pool manager `url` goes through, and its proxy (None: direct)."""
        via = self.settings.proxy_for(url)
        with self._lock:
            found = self._managers.get(via)
            if found is None:
                found = self._managers[via] = _manager(via, self._kw)
                if self._https_pool_cls is not None:
                    classes = {**found.pool_classes_by_scheme, "https": self._https_pool_cls}
                    found.pool_classes_by_scheme = classes
        return found, via

    def urlopen(self, method: str, url: str, **kw: Any) -> urllib3.HTTPResponse:
        manager, via = self.manager(url)
        try:
            response = manager.urlopen(method, url, **kw)
        except urllib3.exceptions.HTTPError as exc:
            failure = _proxy_failure(exc, via) if via is not None else None
            if failure is not None:
                raise failure from None
            raise
        if via is not None and response.status == 407:  # plain http, forwarded by the proxy
            response.drain_conn()
            response.release_conn()
            raise _auth_failed(via)
        return response

    def request(self, method: str, url: str, **kw: Any) -> urllib3.HTTPResponse:
        """Like `PoolManager.request`: `body` and `headers` given, no fields or JSON."""
        kw.setdefault("headers", self.headers)
        return self.urlopen(method, url, **kw)

    def clear(self) -> None:
        with self._lock:
            for manager in self._managers.values():
                manager.clear()

    def __enter__(self) -> Pools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _tls(ca_file: str | None, ca_data: str | None, verify: bool) -> dict[str, Any]:
    if not verify:
        return {"cert_reqs": "CERT_NONE"}
    if ca_data and not ca_file:
        context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        context.load_verify_locations(cadata=ca_data)
        return {"cert_reqs": "CERT_REQUIRED", "ssl_context": context}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file}


def _manager(via: proxy.Proxy | None, kw: dict[str, Any]) -> urllib3.PoolManager:
    if via is None:
        return urllib3.PoolManager(**kw)
    proxy_headers = {}
    if via.user is not None:
        credentials = f"{via.user}:{via.password or ''}"
        proxy_headers = urllib3.make_headers(proxy_basic_auth=credentials)
        logs.register_secret(proxy_headers["proxy-authorization"].split(" ", 1)[1])
    log.debug("connections to some hosts go through proxy %s", via.shown)
    # https is tunnelled with CONNECT (urllib3's default): TLS to the origin, not the proxy.
    return urllib3.ProxyManager(via.url, proxy_headers=proxy_headers, **kw)


def _auth_failed(via: proxy.Proxy) -> ProxyError:
    if via.user is None:
        what = f"requires authentication: set a user in {via.source}, a password in its file"
    elif via.password is None:
        what = f"refused user {via.user!r} without a password: set network.proxy_password_file"
    else:
        what = f"refused the credentials of user {via.user!r}"
    return ProxyError(f"proxy {via.shown} {what} (HTTP 407)", code="PROXY_AUTH_FAILED")


def _proxy_failure(exc: BaseException, via: proxy.Proxy) -> ProxyError | None:
    """PROXY_AUTH_FAILED for a 407 to CONNECT, PROXY_UNREACHABLE when no connection to the
    proxy was made; None when the proxy answered and the trouble is the origin's."""
    chain = causes(exc)
    for cause in chain:
        status = _TUNNEL_STATUS.search(str(cause))
        if status:
            return _auth_failed(via) if status.group(1) == "407" else None
    wrapper = next((c for c in chain if isinstance(c, urllib3.exceptions.ProxyError)), None)
    if wrapper is None:
        return None
    inner = [a for a in wrapper.args if isinstance(a, BaseException)]
    reason = short_reason(inner[0] if inner else wrapper)
    return ProxyError(
        f"cannot connect to proxy {via.shown} (from {via.source}): {reason}",
        code="PROXY_UNREACHABLE",
    )


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (urllib3 nests causes in `reason` and in its args), outermost
    first, bounded."""
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(found) < 16:
        current = todo.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        inner = [getattr(current, "reason", None), getattr(current, "original_error", None)]
        inner += [a for a in current.args if isinstance(a, BaseException)]
        inner += [current.__cause__, current.__context__]
        todo.extend(e for e in inner if isinstance(e, BaseException))
    return found


def failure(exc: Exception, shown: str) -> tuple[str, str]:
    """What a urllib3 request to `shown` failed on, for the transport's coded error: its
    kind ("tls", "connect", "timeout" or "other") and a message that is safe to show."""
    errors = urllib3.exceptions
    reason = exc.reason if isinstance(exc, errors.MaxRetryError) and exc.reason else exc
    if isinstance(reason, errors.SSLError):
        return "tls", f"{shown}: TLS failed: {short_reason(reason)}"
    if isinstance(reason, errors.NewConnectionError):  # a ConnectTimeoutError subclass
        return "connect", f"cannot connect to {shown}: {short_reason(reason)}"
    if isinstance(reason, errors.TimeoutError):
        return "timeout", f"{shown} did not answer in time"
    return "other", f"{shown}: connection failed: {short_reason(reason)}"


def short_reason(exc: BaseException) -> str:
    """The useful end of an exception's text: urllib3 nests causes inside its messages, and
    object reprs (memory addresses) say nothing to a user."""
    text = _OBJECT_REPR.sub("", str(exc))
    if re.search(r"Name or service not known|Failed to resolve|failure in name resolution", text):
        return "cannot resolve the host name"
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        text = text.split(marker, 1)[-1]
    text = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", text)
    return logs.redact(text.strip("()'\" "))[:200] or type(exc).__name__
