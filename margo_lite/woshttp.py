"""One HTTP exchange with the WOS, and what its answer means to the caller.

`make_pool` gives connection pools with margo-lite's defaults (no retries, no redirects, a
timeout, the user agent, TLS as configured); `request` makes one exchange and bounds the
answer it reads; `check` turns an answer that is not 2xx into the error the outbox
decides on: `WosTransientError` (network, TLS, 401, 408, 429, 5xx: try later, honouring
Retry-After) or `WosRejectedError` (any other 4xx: the WOS said no). The Device API client
and onboarding both talk through these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

from margo_lite import logs, proxy
from margo_lite.constants import USER_AGENT
from margo_lite.errors import ProxyError, WosRejectedError, WosTransientError
from margo_lite.pools import Pools
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

MAX_RESPONSE = 64 * 1024  # an answer larger than this is cut: we only ever log or parse its start
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def make_pool(
    ca_file: str | None,
    timeout: float,
    *,
    verify: bool = True,
    ca_data: str | None = None,
    proxies: proxy.Settings = proxy.DIRECT,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> Pools:
    """Connection pools with margo-lite's defaults: no retries, no redirects, a timeout.

    `ca_data` (PEM) trusts a CA not yet on disk (onboarding writes nothing before it ends);
    `verify=False` only for downloading that CA, whose fingerprint is checked instead.
    """
    return Pools(
        proxies,
        ca_file=ca_file,
        ca_data=ca_data,
        verify=verify,
        cert_file=client_cert,
        key_file=client_key,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=False,
        maxsize=2,
        headers={"User-Agent": USER_AGENT},
    )


def request(
    pool: Pools,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    what: str = "",
) -> Response:
    """One HTTP exchange; network and TLS trouble become `WosTransientError`."""
    shown = what or f"{method} {logs.sanitize_url(url)}"
    try:
        raw = pool.urlopen(
            method,
            url,
            body=body,
            headers={**pool.headers, **(headers or {})},
            redirect=False,
            retries=False,
            preload_content=False,
        )
    except Urllib3SSLError as exc:
        raise WosTransientError(
            f"{shown}: TLS verification failed ({_reason(exc)})", code="WOS_TLS_FAILED"
        ) from None
    except (Urllib3Error, OSError) as exc:
        raise WosTransientError(f"{shown}: {_reason(exc)}") from None
    except ProxyError as exc:
        raise WosTransientError(f"{shown}: {exc.message}", code=exc.code) from None
    try:
        data = raw.read(MAX_RESPONSE + 1)
        complete = len(data) <= MAX_RESPONSE
        data = data[:MAX_RESPONSE]
    except (Urllib3Error, OSError) as exc:
        raw.close()
        raise WosTransientError(f"{shown}: {_reason(exc)}") from None
    if complete:
        raw.release_conn()
    else:
        raw.close()  # do not read an unbounded answer just to reuse the connection
    log.debug("%s -> %d", shown, raw.status)
    return Response(raw.status, data, dict(raw.headers))


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a network error."""
    reason = getattr(exc, "reason", None) or exc
    args = getattr(reason, "args", ())
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], BaseException):
        text = f"{args[0].rstrip('.').lower()}: {args[1]}"  # ProtocolError(text, cause)
    elif isinstance(reason, Urllib3Error):
        text = str(reason).split(": ", 1)[-1]  # drop the connection object's repr
    else:
        text = str(reason)
    return logs.redact(text) or type(exc).__name__


def body_text(response: Response) -> str:
    return logs.redact(response.body[:500].decode("utf-8", errors="replace")).strip()


def retry_after(response: Response) -> float | None:
    """`Retry-After` in seconds (an HTTP date is left to the caller's own backoff)."""
    value = response.headers.get("Retry-After") or response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies


def check(response: Response, what: str) -> Response:
    """`response` when it is 2xx; otherwise the error the outbox needs to decide."""
    status = response.status
    if 200 <= status < 300:
        return response
    body = body_text(response)
    message = f"{what}: HTTP {status}" + (f": {body}" if body else "")
    if status == 401:
        raise WosTransientError(message, code="WOS_UNAUTHORIZED", status=status, body=body)
    if status in _RETRY_STATUSES or status >= 500:
        raise WosTransientError(
            message,
            code="WOS_SERVER_ERROR",
            status=status,
            body=body,
            retry_after=retry_after(response),
        )
    if 400 <= status < 500:
        raise WosRejectedError(message, status=status, body=body)
    raise WosTransientError(message, code="WOS_BAD_RESPONSE", status=status, body=body)
