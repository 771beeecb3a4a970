"""Every error margo-lite raises on purpose, under one root.

Each error carries a Margo error code (the string the WOS sees in a status report and the
user sees in a log line) and a message that is safe to show: no secrets, no tracebacks.
Families follow the areas of the agent; `TransientError` is a mixin that marks errors
worth retrying with backoff, so the loop decides by catching one type.
"""

from __future__ import annotations


class MargoLiteError(Exception):
    """Root of the tree. `code` is stable and machine-readable; `message` is for humans."""

    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class TransientError(MargoLiteError):
    """Mixin: the cause may go away by itself (network, server, engine busy); retry later."""


# --- configuration and command line -------------------------------------------------------


class ConfigError(MargoLiteError):
    """The configuration file is missing, unreadable or invalid.

    `source` is the file and `key` the dotted key, so the message can name both.
    """

    code = "CONFIG_INVALID"

    def __init__(self, message: str, *, source: str = "", key: str = "") -> None:
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.key = key


class UsageError(MargoLiteError):
    code = "USAGE"


class InvalidYamlError(MargoLiteError):
    """YAML that does not parse, or that breaks a size, depth or alias limit."""

    code = "INVALID_YAML"


# --- state store ----------------------------------------------------------------------------


class StateError(MargoLiteError):
    code = "STATE_IO"


class StateCorruptError(StateError):
    """A record and its previous copy are both unreadable: never treat this as 'empty'."""

    code = "STATE_CORRUPT"


# --- desired state source (Git, or another `source.DesiredSource`) ----------------------------


class SourceError(MargoLiteError):
    """The desired-state source failed; the agent keeps the last desired state in force.
    Each source raises its own subclass (`GitError`)."""

    code = "SOURCE_ERROR"


class GitError(SourceError):
    """The repository cannot be used as configured; a human (or the WOS) has to act.

    Codes: GIT_AUTH_FAILED (HTTP 401/403), GIT_NOT_FOUND (404, no repository),
    GIT_BRANCH_MISSING, GIT_REDIRECTED, GIT_TLS_FAILED, GIT_PROTOCOL_UNSUPPORTED (no
    protocol v2 or no shallow fetch), GIT_TOKEN_UNREADABLE, GIT_TOO_LARGE,
    GIT_SIGNATURE_INVALID, GIT_COMMIT_MISSING (not held locally), GIT_PATH_INVALID,
    GIT_STORE_FAILED (the local repository cannot be written), GIT_OBJECT_INVALID (a branch,
    commit or tree entry names an object of another type: a tag, tree or blob as the tip).
    """

    code = "GIT_ERROR"


class GitTransientError(GitError, TransientError):
    """Worth retrying with backoff. Codes: GIT_UNREACHABLE (refused, DNS, reset),
    GIT_TIMEOUT, GIT_SERVER_ERROR (5xx, 429, ERR lines), GIT_PROTOCOL_ERROR (a malformed or
    cut answer), GIT_PACK_INVALID (a truncated or corrupt pack), GIT_STORE_CORRUPT (the local
    repository was damaged and is discarded: the next poll fetches again), GIT_STORE_BUSY
    (another margo-lite process holds the local repository)."""

    code = "GIT_UNREACHABLE"


# --- desired state source (the WFM's State Manifest, Margo 1.0) -----------------------------


class WfmError(SourceError):
    """The WFM's desired state cannot be accepted; nothing of that manifest is applied.

    Codes: WFM_MANIFEST_INVALID (not a State Manifest, or a digest of another algorithm),
    WFM_DIGEST_MISMATCH (a document or bundle whose sha256 is not the manifest's),
    WFM_BUNDLE_INVALID (not a tar+gzip of exactly the manifest's documents),
    WFM_ROLLBACK_REFUSED (a manifestVersion not above the accepted one, and other bytes),
    WFM_URL_REFUSED (a url that is absolute or leaves /api/v1/), WFM_TOO_LARGE,
    WFM_FORBIDDEN (HTTP 401/403), WFM_NOT_FOUND (the manifest endpoint answers 404),
    WFM_NOT_ACCEPTABLE (406), WFM_REDIRECTED, WFM_TLS_FAILED, WFM_STORE_FAILED (state_dir
    cannot be written).
    """

    code = "WFM_ERROR"


class WfmTransientError(WfmError, TransientError):
    """Worth retrying with backoff. Codes: WFM_UNREACHABLE, WFM_TIMEOUT, WFM_SERVER_ERROR
    (5xx, 429), WFM_PROTOCOL_ERROR (a cut answer, a 304 to an unconditional request),
    WFM_DOCUMENT_MISSING (404 for a digest the manifest names: a newer manifest came),
    WFM_CACHE_CORRUPT (a cached document rotted: the next poll fetches it again)."""

    code = "WFM_UNREACHABLE"


# --- desired state documents ----------------------------------------------------------------


class DesiredStateError(MargoLiteError):
    """A document breaks the contract. `source` names the file and document, `field` the field."""

    code = "INVALID_FIELD"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        source: str = "",
        field: str = "",
        deployment_id: str | None = None,
    ) -> None:
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message, code=code)
        self.source = source
        self.field = field
        self.deployment_id = deployment_id


#: Every code a `DesiredStateError` (or a plan's Failed/Pending reason) carries, for docs and
#: tests. The YAML codes come from `InvalidYamlError`; the last three come from the planner.
DESIRED_STATE_CODES = (
    "INVALID_YAML",  # not YAML, not text, duplicate keys
    "YAML_TOO_COMPLEX",  # too deep, too many nodes (alias bomb), too many documents
    "YAML_TOO_LARGE",  # a file, or all files together, over the size limit
    "NOT_A_MAPPING",  # a document or a field that must be a mapping is not
    "MISSING_FIELD",
    "INVALID_FIELD",
    "INVALID_DEPLOYMENT_ID",
    "INVALID_APPLICATION_ID",
    "UNSUPPORTED_API_VERSION",
    "UNSUPPORTED_PROFILE",
    "DUPLICATE_DEPLOYMENT_ID",
    "DUPLICATE_COMPONENT",
    "UNKNOWN_COMPONENT_IN_PARAMETER",
    "UNSUPPORTED_POINTER",
    "CONFLICTING_PARAMETERS",  # two parameters set the same variable or overlapping paths
    "MISSING_PACKAGE",  # an in-repository packageLocation/keyLocation names nothing
    "COMPOSE_INVALID",  # a parameter value that is not plain JSON (a date, a non-string key)
    "WRONG_DEVICE",  # a v1 document whose metadata.deviceId names another device
    "DEPENDENCY_CYCLE",  # planner: deployments wait for each other
    "WAITING_FOR_DEPENDENCY",  # planner: Pending reason
    "NOT_STARTED",  # planner: Pending reason of a component whose turn has not come
)


# --- application packages and local policy --------------------------------------------------


class PackageError(MargoLiteError):
    code = "PACKAGE_INVALID"


class PackageTransientError(PackageError, TransientError):
    code = "PACKAGE_DOWNLOAD_FAILED"


class DownloadError(PackageTransientError):
    """A download failed after its retries; `status` is the HTTP status if one came back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        challenge: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.challenge = challenge  # WWW-Authenticate of a 401, for registry token auth


class OciError(PackageError):
    """An OCI registry's answer or artifact that margo-lite will not use. Codes:
    OCI_REFERENCE_INVALID (the oci:// location), OCI_NOT_FOUND (no such repository, tag or
    blob), OCI_DIGEST_MISMATCH (bytes that are not what their digest says),
    OCI_DIGEST_UNSUPPORTED (an algorithm other than sha256), OCI_AUTH_FAILED (the registry
    or its token service refused), OCI_MANIFEST_INVALID (not a manifest or artifact
    margo-lite reads, or hostile file names in it)."""

    code = "OCI_MANIFEST_INVALID"


class OciTransientError(OciError, TransientError):
    """The registry or its token service cannot be reached or fails (5xx); retried later."""

    code = "OCI_UNREACHABLE"


class PolicyError(PackageError):
    """A compose file breaks the local policy; `rule` is the config key, `service` the service."""

    code = "POLICY_DENIED"

    def __init__(self, message: str, *, rule: str = "", service: str = "") -> None:
        super().__init__(message)
        self.rule = rule
        self.service = service


# --- container engines and compose drivers --------------------------------------------------


class EngineError(MargoLiteError):
    """An engine or compose command failed. Keeps argv, return code and the stderr tail."""

    code = "ENGINE_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        argv: tuple[str, ...] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class EngineTransientError(EngineError, TransientError):
    code = "ENGINE_UNAVAILABLE"


class ComposeError(EngineError):
    """The compose project itself is wrong (unreadable file, bad interpolation, a key the
    built-in driver does not support): a package problem, not retried until it changes."""

    code = "COMPOSE_INVALID"


# --- the WOS (Device API) -------------------------------------------------------------------


class WosError(MargoLiteError):
    """A Device API call failed. `status` is the HTTP status when the WOS answered, `body`
    the start of its answer (secrets masked), so a dropped report can say why."""

    code = "WOS_ERROR"

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


class WosTransientError(WosError, TransientError):
    code = "WOS_UNREACHABLE"


class WosRejectedError(WosError):
    """The WOS answered 4xx (not 401/408/429): this request will not get better by itself."""

    code = "WOS_REJECTED"


class OnboardingError(WosError):
    code = "ONBOARDING_FAILED"


# --- the site's network: the HTTP proxy -------------------------------------------------------


class ProxyError(TransientError):
    """The site's HTTP proxy failed us: PROXY_UNREACHABLE (no connection to it) or
    PROXY_AUTH_FAILED (HTTP 407). The message names the proxy, its password masked. Each
    transport re-raises it in its own family with the same code and message."""

    code = "PROXY_UNREACHABLE"


# --- the service's sandbox ------------------------------------------------------------------


class DirNotWritableError(ConfigError):
    """`device.state_dir` or `device.runtime_dir` lies where the service may not write."""

    code = "CONFIG_DIR_NOT_WRITABLE"
