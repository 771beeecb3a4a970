"""One GET below `wos.url` for the WFM desired-state source: bounded, its failures coded.

The pool is the caller's (mutual TLS and the WFM's identity check are the pool's business);
the path must be a plain path below `/api/v1/` (`wfmmanifest.check_url`), redirects are
refused, a body is read up to a limit, and every other answer than `200` or `304` becomes
a `WfmError` whose code says whether waiting helps (`WfmTransientError`). An RFC 9457
problem answer lends its title and detail to the message.
"""

from __future__ import annotations

import json

import urllib3

from margo_lite import logs, pools, wfmmanifest
from margo_lite.errors import ProxyError, WfmError, WfmTransientError
from margo_lite.pools import short_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

MAX_ETAG = 256
MAX_PROBLEM = 4096
_CHUNK = 1 << 16


def get(
    pool: Any, base: str, shown: str, path: str, headers: dict[str, str], limit: int
) -> tuple[int, bytes, str | None]:
    """(status, body, ETag) of `GET base+path`; only 200 and 304 come back."""
    wfmmanifest.check_url(path)
    try:
        resp = pool.request(
            "GET", base + path, headers=headers, preload_content=False, redirect=False
        )
    except urllib3.exceptions.HTTPError as exc:
        raise network_error(exc, shown) from None
    except ProxyError as exc:
        raise WfmTransientError(f"{shown}: {exc.message}", code=exc.code) from None
    try:
        status = resp.status
        if status == 304:
            return 304, b"", None
        if status != 200:
            problem = read(resp, MAX_PROBLEM, shown, truncate=True)
            raise status_error(status, problem, resp.headers, shown, path)
        return 200, read(resp, limit, shown), etag(resp.headers.get("ETag"))
    except urllib3.exceptions.HTTPError as exc:
        raise network_error(exc, shown) from None
    finally:
        resp.release_conn()


def read(resp: Any, limit: int, shown: str, *, truncate: bool = False) -> bytes:
    """The (decoded) body, at most `limit` bytes: WFM_TOO_LARGE beyond (or cut, `truncate`)."""
    body = bytearray()
    for chunk in resp.stream(_CHUNK):
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise WfmError(f"{shown}: an answer is larger than {limit} bytes", code="WFM_TOO_LARGE")
    return bytes(body)


def etag(value: str | None) -> str | None:
    """The opaque part of a strong ETag, or None when absent or unusable."""
    if not value:
        return None
    value = value.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    usable = value and len(value) <= MAX_ETAG and value.isascii() and value.isprintable()
    if not usable or any(c in value for c in '"\\'):
        return None
    return value


def status_error(
    status: int, body: bytes, headers: Any, shown: str, path: str
) -> WfmError | WfmTransientError:
    what = f"{shown}{path}"
    detail = problem(body)
    if status in (401, 403):
        return WfmTransientError(
            f"{what} denied access (HTTP {status}){detail}", code="WFM_FORBIDDEN"
        )
    if 300 <= status < 400:
        where = logs.sanitize_url(headers.get("Location", "?"))
        return WfmError(
            f"{what} redirects (HTTP {status}) to {where}; refused", code="WFM_REDIRECTED"
        )
    if status == 404:
        if path == "/api/v1/deployments":
            return WfmError(f"{what} not found (HTTP 404){detail}", code="WFM_NOT_FOUND")
        return WfmTransientError(
            f"{what} not found (HTTP 404){detail}", code="WFM_DOCUMENT_MISSING"
        )
    if status == 406:
        return WfmError(
            f"{what} cannot send a v1 manifest (HTTP 406){detail}", code="WFM_NOT_ACCEPTABLE"
        )
    if status >= 500 or status in (408, 429):
        return WfmTransientError(
            f"{what}: server error (HTTP {status}){detail}", code="WFM_SERVER_ERROR"
        )
    return WfmError(f"{what}: unexpected HTTP status {status}{detail}", code="WFM_REFUSED")


def problem(body: bytes) -> str:
    """`: <title>: <detail>` of an RFC 9457 answer, or nothing."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [doc[k][:200] for k in ("title", "detail") if isinstance(doc.get(k), str)]
    return logs.redact(": " + ": ".join(parts)) if parts else ""


def network_error(exc: Exception, shown: str) -> WfmError | WfmTransientError:
    """A coded error for what urllib3 raised. A failure that carries its own WFM code (the
    pool's check of the WFM's identity, before any request is sent) keeps it; like a report
    refused for it, it is transient (a corrected certificate or setting fixes it)."""
    for cause in pools.causes(exc):
        code = getattr(cause, "code", None)
        if isinstance(code, str) and code.startswith("WFM_"):
            log.error("SECURITY: %s: %s; nothing was sent", shown, cause)
            return WfmTransientError(f"{shown}: {short_reason(cause)}; nothing was sent", code=code)
    kind, message = pools.failure(exc, shown)
    if kind == "tls":
        return WfmError(message, code="WFM_TLS_FAILED")
    code = "WFM_TIMEOUT" if kind == "timeout" else "WFM_UNREACHABLE"
    return WfmTransientError(message, code=code)
