"""The Device API client: status reports, capabilities, OAuth2 client credentials.

The documents it sends are built in `wospayload`, the HTTP exchange and its error rules
are `woshttp`; both are re-exported here for callers of the client.

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
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from margo_lite import logs, proxy
from margo_lite.config import WosConfig
from margo_lite.errors import WosError, WosRejectedError, WosTransientError
from margo_lite.signing import HEADER as SIGNATURE_HEADER
from margo_lite.signing import Signer
from margo_lite.statestore import StateStore
from margo_lite.valueclass import dataclass
from margo_lite.woshttp import Response, body_text, check, make_pool, request
from margo_lite.wospayload import CASES, STATES, encode_body, spell, status_body

log = logs.get(__name__)

DEFAULT_TOKEN_LIFETIME = 300.0  # when the token endpoint does not say (`expires_in` is optional)
CAPABILITIES_RECORD = "wos/capabilities.json"

__all__ = [
    "CASES",
    "STATES",
    "Response",
    "WosClient",
    "check",
    "encode_body",
    "make_pool",
    "request",
    "spell",
    "status_body",
]


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # on the client's clock; refreshed from then on


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

    def post_status(self, deployment_id: str, body: dict, revision: str | None = None) -> None:
        """Deliver one status report; raises WosTransientError (retry) or WosRejectedError.
        `revision` is for the Margo 1.0 client: the draft body has no place for it."""
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
                f"{what}: credentials refused (HTTP {response.status}): {body_text(response)}",
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
