"""Status reports and capabilities to a Margo 1.0 WFM (`wos.api: v1`).

`POST {wos.url}/api/v1/deployments/{id}/status` and `PUT {wos.url}/api/v1/capabilities/
{deviceId}`, over `mtls.WfmPools` (mutual TLS, the WFM's SPIFFE ID checked before anything is
sent). The outbox hands over each queued event as it was queued; the 1.0 body is rendered
here (`wfmbody`) with the manifest version the event is about.

Answers, for the outbox to decide (the same split as the draft client):
- 2xx: delivered.
- RFC 9457 problem: logged by type, title and detail. `retryable: true` means later
  (`Retry-After`, else `retryAfterSeconds`, sets the wait); `retryable: false` is a refusal.
- without a problem's word: 401/403 (the WFM does not accept this identity now), 408, 429
  and 5xx mean later; any other 4xx is a refusal.
- a WFM with another SPIFFE ID, TLS or network trouble: later (WosTransientError).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import urllib3

from margo_lite import logs, mtls, proxy, wfmbody, woshttp, wospayload
from margo_lite.config import WosConfig
from margo_lite.constants import USER_AGENT
from margo_lite.errors import ConfigError, WosRejectedError, WosTransientError
from margo_lite.statestore import StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

CAPABILITIES_RECORD = "wfm/capabilities.json"
ACCEPTED_RECORD = "wfm/accepted.json"  # the desired-state source's record of the manifest
ACCEPT = "application/json, application/problem+json"


def make_pools(
    cfg: WosConfig, proxies: proxy.Settings = proxy.DIRECT, *, source: str = ""
) -> mtls.WfmPools:
    """The pools every WFM call uses (status, capabilities, desired state)."""
    if not cfg.client_cert:
        raise ConfigError(
            "wos.api v1 needs the device's X.509-SVID (mutual TLS)",
            source=source,
            key="wos.client_cert",
        )
    return mtls.WfmPools(
        cfg.client_cert,
        cfg.client_key,
        cfg.ca_file,
        server_id=getattr(cfg, "server_id", None),
        proxies=proxies,
        headers={"User-Agent": USER_AGENT},
        source=source,
        timeout=urllib3.Timeout(connect=cfg.timeout, read=cfg.timeout),
        retries=False,
        maxsize=2,
    )


class WfmClient:
    """Calls the 1.0 API for one device; thread-safe like its pools."""

    def __init__(
        self,
        cfg: WosConfig,
        device_id: str,
        state_dir: Path,
        *,
        proxies: proxy.Settings = proxy.DIRECT,
        pools: mtls.WfmPools | None = None,
        source: str = "",
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.store = StateStore(state_dir)
        self._base = cfg.url.rstrip("/")
        self.pools = pools or make_pools(cfg, proxies, source=source)

    def close(self) -> None:
        self.pools.clear()

    def __enter__(self) -> WfmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- URLs ----------------------------------------------------------------------------

    def status_url(self, deployment_id: str) -> str:
        return (
            f"{self._base}/api/v1/deployments/{urllib.parse.quote(deployment_id, safe='')}/status"
        )

    def capabilities_url(self) -> str:
        return f"{self._base}/api/v1/capabilities/{urllib.parse.quote(self.device_id, safe='/')}"

    # --- calls ---------------------------------------------------------------------------

    def post_status(self, deployment_id: str, body: dict, revision: Any = None) -> None:
        """Deliver one queued report as a 1.0 body; raises like `wos.WosClient`."""
        try:
            state, error, components = wfmbody.status_from_event(body)
            rendered = wfmbody.status_v1(
                deployment_id,
                self._manifest_version(revision),
                state,
                error,
                components,
                device_id=self.device_id,
            )
        except ValueError as exc:
            raise WosRejectedError(
                f"status report for {deployment_id} cannot be rendered: {exc}",
                code="WFM_REPORT_INVALID",
            ) from None
        self._call("POST", self.status_url(deployment_id), rendered, what="status report")

    def send_capabilities(self, body: dict, *, force: bool = False) -> bool:
        """PUT the 1.0 capabilities when they changed since the last acknowledged ones."""
        digest = hashlib.sha256(wospayload.encode_body(body)).hexdigest()
        url = self.capabilities_url()
        known = self.store.read_json(CAPABILITIES_RECORD)
        mark = {"url": url, "digest": digest}
        if known == mark and not force:
            log.debug("capabilities unchanged since last acknowledged; not sent")
            return False
        self._call("PUT", url, body, what="capabilities")
        self.store.write_json(CAPABILITIES_RECORD, mark)
        log.info("capabilities sent to %s", logs.sanitize_url(url))
        return True

    def _manifest_version(self, revision: Any) -> int:
        """The report's own revision (the manifest version it is about); for an event queued
        without one, the accepted manifest's version."""
        if isinstance(revision, int) and not isinstance(revision, bool):
            return revision
        if isinstance(revision, str) and revision.isdigit():
            return int(revision)
        record = self.store.read_json(ACCEPTED_RECORD)
        version = record.get("version") if isinstance(record, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            return version
        raise ValueError("no manifest version is known for it")

    def _call(self, method: str, url: str, body: Mapping[str, Any], *, what: str) -> None:
        data = wospayload.encode_body(body)
        headers = {"Content-Type": "application/json", "Accept": ACCEPT}
        shown = f"{what} {method} {logs.sanitize_url(url)}"
        try:
            response = woshttp.request(
                self.pools, method, url, body=data, headers=headers, what=shown
            )
        except WosTransientError as exc:
            refused = mtls.identity_error(exc)
            if refused is None:
                raise
            log.error("SECURITY: %s: %s; nothing was sent", shown, refused)
            raise WosTransientError(f"{shown}: {refused}", code=refused.code) from None
        check(response, shown)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def check(response: woshttp.Response, what: str) -> woshttp.Response:
    """`response` when it is 2xx; otherwise the error the outbox needs (see the module)."""
    status = response.status
    if 200 <= status < 300:
        return response
    problem = wfmbody.parse_problem(response.body, _header(response.headers, "content-type"))
    retry_after = woshttp.retry_after(response)
    if problem is not None:
        if retry_after is None:
            retry_after = problem.retry_after
        text = problem.describe()
        log.log(
            logging.WARNING if problem.retryable is not False else logging.ERROR,
            "%s: HTTP %d problem %s%s",
            what,
            status,
            text,
            "" if problem.retryable is None else f" (retryable: {problem.retryable})",
        )
        message = f"{what}: HTTP {status}: {text}"
        if problem.retryable is True:
            raise WosTransientError(
                message, code="WFM_RETRY_LATER", status=status, body=text, retry_after=retry_after
            )
        if problem.retryable is False:
            raise WosRejectedError(message, code="WFM_REJECTED", status=status, body=text)
    else:
        body = woshttp.body_text(response)
        message = f"{what}: HTTP {status}" + (f": {body}" if body else "")
        text = body
    if status in (401, 403):
        raise WosTransientError(message, code="WFM_FORBIDDEN", status=status, body=text)
    if status in (408, 429) or status >= 500:
        raise WosTransientError(
            message, code="WFM_SERVER_ERROR", status=status, body=text, retry_after=retry_after
        )
    if 400 <= status < 500:
        raise WosRejectedError(message, code="WFM_REJECTED", status=status, body=text)
    raise WosTransientError(message, code="WFM_BAD_RESPONSE", status=status, body=text)
