"""Errors of talking to the WOS: Device API calls and reports (and the WFM's, Margo 1.0),
and onboarding the device.
"""

from __future__ import annotations

from .base import ProxyError, StalledError, TransientError

# --- the WOS (Device API) -------------------------------------------------------------------


class WosError(TransientError):
    """A Device API call failed; the outbox waits and tries again with backoff. `status` is
    the HTTP status when the WOS answered, `body` the start of its answer (secrets masked),
    so a dropped report can say why."""

    code = "WOS_ERROR"
    codes = {
        "WOS_ERROR": "read the message in the log",
        "WOS_AUTH_CONFIG": "fix the `wos.*` credentials the message names",
        "SIGNING_FAILED": "check `wos.signing_key` and openssl",
        "SIGNING_KEY_MISMATCH": "make `wos.signing_key` match its certificate",
        "SIGNING_UNAVAILABLE": "install openssl",
    }

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class WosTransientError(WosError):
    code = "WOS_UNREACHABLE"
    codes = {
        "WOS_UNREACHABLE": "check the network and the WOS",
        "WOS_SERVER_ERROR": "check the WOS (5xx, 408, 429)",
        "WOS_BAD_RESPONSE": "check the WOS: its answer is not what the Device API says",
        "WOS_UNAUTHORIZED": "none if it passes: a new token is fetched once; else the credentials",
        "WOS_AUTH_FAILED": "fix the `wos.*` client credentials",
        "WOS_TLS_FAILED": "fix `wos.ca_file` or the WOS's certificate",
        "WFM_RETRY_LATER": "none: the WFM asked (problem+json `retryable`) to send it again later",
        "WFM_BAD_RESPONSE": "check the WFM: its answer is not what the API says",
        "WFM_SERVER_ERROR": "check the WFM (5xx, 408, 429)",
        "WFM_FORBIDDEN": "the WFM refused this device's identity (HTTP 401/403): check its "
        "client certificate and the WFM's records; reports wait meanwhile",
        **ProxyError.codes,
    }


class WosRejectedError(WosError):
    """The WOS answered 4xx (not 401/408/429): this request will not get better by itself;
    that deployment's report waits, and is dropped after three rejections."""

    code = "WOS_REJECTED"
    codes = {
        "WOS_REJECTED": "check the WOS's log: it refuses the report (see `body`)",
        "WFM_REJECTED": "check the WFM's log: it refuses the report (problem+json logged)",
        "WFM_REPORT_INVALID": "a bug: the report does not fit the v1 schema; report it",
    }


class OnboardingError(StalledError):
    """`margo-lite onboard` failed; nothing was written. Run it again once fixed."""

    code = "ONBOARDING_FAILED"
    codes = {
        "ONBOARDING_FAILED": "read the message; run `margo-lite onboard` again",
        "ONBOARDING_BAD_ANSWER": "check the WOS's onboarding endpoint",
        "ONBOARDING_CA_INVALID": "use a valid CA certificate",
        "ONBOARDING_CA_MISMATCH": "check the CA fingerprint you were given",
        "ONBOARDING_DECLINED": "ask the WOS operator to accept the device",
        "ONBOARDING_WRITE_FAILED": "fix the permissions of the configuration folder",
    }
