"""The Device API client: status reports, capabilities, OAuth2 client credentials.

One set of pools per client (`margo_lite.pools`: direct or through the site proxy;
connections are reused), a timeout on every call, mutual TLS when `wos.client_cert` is set,
TLS checked against `wos.ca_file` (onboarding stores the WOS root CA there) or the system
store, and no automatic retries or redirects: the caller (the outbox) decides when to try
again, from the error's type: `WosTransientError` means later, `WosRejectedError` means the
WOS said no.

A 401 costs one token refresh and one retry, never more. The client secret is read from its
file whenever a token is needed, so a rotated secret needs no restart; the secret and every
token are registered with `logs` and never appear in a message.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

from margo_lite import logs, proxy
from margo_lite.config import WosConfig
from margo_lite.constants import USER_AGENT
from margo_lite.errors import ProxyError, WosError, WosRejectedError, WosTransientError
from margo_lite.pools import Pools
from margo_lite.signing import HEADER as SIGNATURE_HEADER
from margo_lite.signing import Signer
from margo_lite.statestore import StateStore

log = logs.get(__name__)

STATES = ("Pending", "Installing", "Installed", "Failed", "Removing", "Removed")
CASES = ("capitalized", "lowercase")
MAX_RESPONSE = 64 * 1024  # an answer larger than this is cut: we only ever log or parse its start
MAX_MESSAGE = 1000  # longest error message in a status report
DEFAULT_TOKEN_LIFETIME = 300.0  # when the token endpoint does not say (`expires_in` is optional)
CAPABILITIES_RECORD = "wos/capabilities.json"
_RETRY_STATUSES = frozenset({408, 429})


# --- pure payloads ---------------------------------------------------------------------------


def spell(state: str, case: str) -> str:
    """A state in the configured spelling (contract §4, decision on spelling)."""
    if state not in STATES:
        raise ValueError(f"unknown deployment state {state!r} (one of {', '.join(STATES)})")
    if case not in CASES:
        raise ValueError(f"unknown status case {case!r}")
    return state.lower() if case == "lowercase" else state


def status_body(
    deployment_id: str,
    state: str,
    error: tuple[str, str] | None,
    components: Sequence[tuple[str, str]],
    case: str,
) -> dict:
    """The DeploymentStatus document of contract §4, field for field.

    `error` is (code, message): required for Failed, and for Pending (its reason). The
    message is masked for registered secrets and cut to a bounded length.
    """
    if state in ("Failed", "Pending") and (error is None or not error[0]):
        raise ValueError(f"a {state} report needs an error code and message")
    code, message = error if error is not None else ("", "")
    message = logs.redact(message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "deployment.margo/v1",
        "kind": "DeploymentStatus",
        "deploymentId": deployment_id,
        "status": {"state": spell(state, case), "error": {"code": code, "message": message}},
        "components": [{"name": name, "state": spell(s, case)} for name, s in components],
    }


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for a JSON body."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- the client ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # on the client's clock; refreshed from then on


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


def _body_text(response: Response) -> str:
    return logs.redact(response.body[:500].decode("utf-8", errors="replace")).strip()


def _retry_after(response: Response) -> float | None:
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
    body = _body_text(response)
    message = f"{what}: HTTP {status}" + (f": {body}" if body else "")
    if status == 401:
        raise WosTransientError(message, code="WOS_UNAUTHORIZED", status=status, body=body)
    if status in _RETRY_STATUSES or status >= 500:
        raise WosTransientError(
            message,
            code="WOS_SERVER_ERROR",
            status=status,
            body=body,
            retry_after=_retry_after(response),
        )
    if 400 <= status < 500:
        raise WosRejectedError(message, status=status, body=body)
    raise WosTransientError(message, code="WOS_BAD_RESPONSE", status=status, body=body)


class WosClient:
    """Calls the Device API for one device. The pool and the token cache are thread-safe."""

    def __init__(
        self,
        cfg: WosConfig,
        device_id: str,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        proxies: proxy.Settings = proxy.DIRECT,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.store = StateStore(state_dir)
        self._clock = clock
        self._pool = make_pool(
            cfg.ca_file,
            cfg.timeout,
            proxies=proxies,
            client_cert=cfg.client_cert,
            client_key=cfg.client_key,
        )
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self._signer: Signer | None = None
        if cfg.signing_key and cfg.signing_cert:
            self._signer = Signer(cfg.signing_key, cfg.signing_cert)
        self.token_requests = 0  # how many tokens this client fetched (health, tests)
        self._warned_mode = False

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> WosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- URLs --------------------------------------------------------------------------

    def _device_url(self, *parts: str) -> str:
        quoted = [urllib.parse.quote(p, safe="") for p in (self.device_id, *parts)]
        return f"{self.cfg.url}/device/" + "/".join(quoted)

    def status_url(self, deployment_id: str) -> str:
        return self._device_url("deployment", deployment_id, "status")

    # --- calls -------------------------------------------------------------------------

    def post_status(self, deployment_id: str, body: dict) -> None:
        """Deliver one status report; raises WosTransientError (retry) or WosRejectedError."""
        self._call("POST", self.status_url(deployment_id), body, what="status report")

    def send_capabilities(self, body: dict, *, force: bool = False) -> bool:
        """POST the first time, PUT when changed since the last acknowledged report.

        Returns False when nothing changed (and not `force`). The acknowledged digest is
        kept per WOS URL and device id, so onboarding to another WOS starts with POST again.
        """
        digest = hashlib.sha256(encode_body(body)).hexdigest()
        known = self.store.read_json(CAPABILITIES_RECORD)
        same_target = (
            isinstance(known, dict)
            and known.get("url") == self.cfg.url
            and known.get("device") == self.device_id
        )
        if same_target and known.get("digest") == digest and not force:
            log.debug("capabilities unchanged since last acknowledged; not sent")
            return False
        url = self._device_url("capabilities")
        method = "PUT" if same_target else "POST"
        try:
            self._call(method, url, body, what="capabilities")
        except WosRejectedError as exc:
            # The WOS knows better than our record: it already has them (409), or lost them.
            other = {"POST": "PUT", "PUT": "POST"}[method]
            if exc.status not in (404, 409):
                raise
            log.info("capabilities %s answered %d; trying %s", method, exc.status, other)
            self._call(other, url, body, what="capabilities")
        self.store.write_json(
            CAPABILITIES_RECORD, {"url": self.cfg.url, "device": self.device_id, "digest": digest}
        )
        log.info("capabilities sent to %s", logs.sanitize_url(url))
        return True

    def _call(self, method: str, url: str, body: dict, *, what: str) -> Response:
        data = encode_body(body)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._signer is not None:
            headers[SIGNATURE_HEADER] = self._signer.header(data)
        what = f"{what} {method} {logs.sanitize_url(url)}"
        for attempt in (1, 2):
            token = self._bearer(renew=attempt == 2)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = request(self._pool, method, url, body=data, headers=headers, what=what)
            if response.status == 401 and attempt == 1 and self.cfg.token_url:
                log.info("%s: token refused (HTTP 401); fetching a new one", what)
                continue
            return check(response, what)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- OAuth2 client credentials -------------------------------------------------------

    def _bearer(self, *, renew: bool = False) -> str | None:
        """A valid access token, fetched when missing, due, or refused (`renew`)."""
        if not self.cfg.token_url:
            return None
        with self._token_lock:
            token = self._token
            if renew or token is None or self._clock() >= token.refresh_at:
                token = self._token = self._fetch_token()
            return token.value

    def _client_secret(self) -> str:
        if not self.cfg.client_id or not self.cfg.client_secret_file:
            raise WosError(
                "wos.token_url needs wos.client_id and wos.client_secret_file",
                code="WOS_AUTH_CONFIG",
            )
        path = Path(self.cfg.client_secret_file)
        try:
            secret = path.read_text().strip()
            loose = path.stat().st_mode & 0o077
        except (OSError, UnicodeDecodeError) as exc:
            raise WosError(
                f"cannot read wos.client_secret_file {self.cfg.client_secret_file}: "
                f"{getattr(exc, 'strerror', None) or exc}",
                code="WOS_AUTH_CONFIG",
            ) from None
        if not secret:
            raise WosError(
                f"wos.client_secret_file {self.cfg.client_secret_file} is empty",
                code="WOS_AUTH_CONFIG",
            )
        logs.register_secret(secret)
        if loose and not self._warned_mode:
            self._warned_mode = True
            log.warning("%s is readable by others: make it mode 0600", path)
        return secret

    def _fetch_token(self) -> _Token:
        assert self.cfg.token_url
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.cfg.client_id or "",
                "client_secret": self._client_secret(),
            }
        ).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        if self._signer is not None:
            headers[SIGNATURE_HEADER] = self._signer.header(form)
        what = f"token request to {logs.sanitize_url(self.cfg.token_url)}"
        started = self._clock()
        response = request(
            self._pool, "POST", self.cfg.token_url, body=form, headers=headers, what=what
        )
        self.token_requests += 1
        if response.status in (400, 401, 403):
            # Wrong or revoked credentials: a device-wide problem, so reports wait, not drop.
            raise WosTransientError(
                f"{what}: credentials refused (HTTP {response.status}): {_body_text(response)}",
                code="WOS_AUTH_FAILED",
                status=response.status,
            )
        check(response, what)
        answer = response.json()
        if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            raise WosTransientError(f"{what}: answer has no access_token", code="WOS_BAD_RESPONSE")
        value = answer["access_token"]
        logs.register_secret(value)
        token_type = answer.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise WosTransientError(
                f"{what}: unsupported token_type {token_type!r}", code="WOS_BAD_RESPONSE"
            )
        lifetime = answer.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        margin = min(60.0, lifetime / 10)  # refresh shortly before it runs out
        log.debug("new access token, valid for %.0fs", lifetime)
        return _Token(value, started + lifetime - margin)
