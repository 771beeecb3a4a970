"""Every error margo-lite raises on purpose, under one root, each in one scheduling family.

Each error carries a Margo error code (the string the WOS sees in a status report and the
user sees in a log line) and a message that is safe to show: no secrets, no tracebacks.
Classes follow the areas of the agent; each class that is raised is in exactly one family,
and the family decides what the agent does next:

- `TransientError`: the cause may go away by itself (network, server, engine busy, a full
  disk): back off and try again;
- `StalledError`: only a new desired revision (a new commit) or a configuration change can
  fix it (a document, a package or a compose file that breaks the contract or the policy,
  a refused signature, a credential that is refused): no retries; what depends on it waits.

`codes` lists every code a class carries, with what the user does about it; the table in
docs/errors.md is rendered from them (`tests/test_errors.py` fails when it is stale). A few
area bases (`SourceError`, `StateError`, `EngineError`) are in no family: they are caught,
never raised themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class MargoLiteError(Exception):
    """Root of the tree. `code` is stable and machine-readable; `message` is for humans."""

    code: str = "INTERNAL_ERROR"
    #: code -> what the user does about it; the first is the class's default `code`.
    codes: ClassVar[Mapping[str, str]] = {}

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class TransientError(MargoLiteError):
    """Family: the cause may go away by itself; back off and try again."""


class StalledError(MargoLiteError):
    """Family: only a new desired revision or a configuration change can fix it; the agent
    does not retry, and the deployment waits until its desired content or the
    configuration changes (a restart or a reload tries once more)."""


class InternalError(TransientError):
    """An exception no code was written for (a bug): reported with its class and message;
    the traceback is in the log at debug level. Retried with backoff."""

    code = "INTERNAL_ERROR"
    codes = {
        "INTERNAL_ERROR": "a bug: report it with the log of `--log-level debug`; the step "
        "is retried with backoff",
    }


class LocalIOError(TransientError):
    """The device's own disk failed a step (full, read-only, permissions)."""

    code = "LOCAL_IO_ERROR"
    codes = {"LOCAL_IO_ERROR": "free disk space or fix the file system; retried with backoff"}


# --- the site's network: the HTTP proxy -------------------------------------------------------


class ProxyError(TransientError):
    """The site's HTTP proxy failed us. The message names the proxy, its password masked.
    Each transport re-raises it in its own family with the same code and message."""

    code = "PROXY_UNREACHABLE"
    codes = {
        "PROXY_UNREACHABLE": "check `network.proxy` and the proxy",
        "PROXY_AUTH_FAILED": "fix the proxy's user and password (HTTP 407)",
    }


# --- configuration and command line -------------------------------------------------------


class ConfigError(StalledError):
    """The configuration file is missing, unreadable or invalid.

    `source` is the file and `key` the dotted key, so the message can name both.
    """

    code = "CONFIG_INVALID"
    codes = {"CONFIG_INVALID": "fix the file and key the message names"}

    def __init__(self, message: str, *, source: str = "", key: str = "") -> None:
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.key = key


class UsageError(StalledError):
    code = "USAGE"
    codes = {"USAGE": "fix the command line (`margo-lite --help`)"}


class InvalidYamlError(StalledError):
    """YAML that does not parse, or that breaks a size, depth or alias limit."""

    code = "INVALID_YAML"
    codes = {
        "INVALID_YAML": "fix the YAML (not YAML, not UTF-8 text, or duplicate keys)",
        "YAML_TOO_COMPLEX": "simplify the file: too deep, too many nodes or documents",
        "YAML_TOO_LARGE": "make the file (or all files together) smaller",
    }


# --- state store ----------------------------------------------------------------------------


class StateError(MargoLiteError):
    """Area base (no family): the state store failed; see the two classes below."""


class StateIOError(StateError, TransientError):
    code = "STATE_IO"
    codes = {
        "STATE_IO": "free disk space or fix the permissions of the state folder; retried",
        "STATE_BUSY": "another margo-lite runs on this state folder: stop it",
    }


class StateCorruptError(StateError, StalledError):
    """A record and its previous copy are both unreadable: never treat this as 'empty'."""

    code = "STATE_CORRUPT"
    codes = {
        "STATE_CORRUPT": "the agent stops rather than act on it: repair or restore the file "
        "the message names (and its `.prev`), then start the agent",
    }


# --- desired state source (Git, or another `source.DesiredSource`) ----------------------------


class SourceError(MargoLiteError):
    """Area base (no family): the desired-state source failed; the agent keeps the last
    desired state in force. Each source raises its own classes (`GitError`)."""


class RevisionError(SourceError, TransientError):
    """A held revision cannot be used at all: reading its documents met an exception no
    code was written for (a bug, like `InternalError`); read again at the next poll."""

    code = "REVISION_UNREADABLE"
    codes = {
        "REVISION_UNREADABLE": "a bug while reading the documents: report it with the log of "
        "`--log-level debug`; the last desired state stays in force meanwhile",
    }


class GitError(SourceError, StalledError):
    """The repository or a commit cannot be used as configured; a human (or the WOS) has to
    act. The last desired state stays in force; polls go on at `poll.max_backoff`."""

    code = "GIT_ERROR"
    codes = {
        "GIT_ERROR": "fix what the message names",
        "GIT_AUTH_FAILED": "fix `git.token_file` / `git.username` (HTTP 401/403)",
        "GIT_NOT_FOUND": "fix `git.url`: no repository there (HTTP 404)",
        "GIT_BRANCH_MISSING": "fix `git.branch`, or push the branch",
        "GIT_REDIRECTED": "set `git.url` to where the server redirects",
        "GIT_TLS_FAILED": "fix `git.ca_file` or the server's certificate",
        "GIT_PROTOCOL_UNSUPPORTED": "use a server that speaks Git smart HTTP with shallow fetch",
        "GIT_TOKEN_UNREADABLE": "make `git.token_file` readable, holding one token",
        "GIT_TOO_LARGE": "make the commit smaller (or raise the limit the message names)",
        "GIT_SIGNATURE_INVALID": "sign the commit with a key in `git.trusted_keys`",
        "GIT_PATH_INVALID": "fix `git.path` or the repository's layout",
        "GIT_STORE_FAILED": "free disk space or fix the permissions of the state folder",
        "GIT_OBJECT_INVALID": "point the branch at a commit (not a tag, tree or blob)",
    }


class GitTransientError(SourceError, TransientError):
    """Worth retrying with backoff: the next poll tries again, the interval doubling up to
    `poll.max_backoff`. A proxy failure keeps its `PROXY_*` code."""

    code = "GIT_UNREACHABLE"
    codes = {
        "GIT_UNREACHABLE": "check the network and the server (refused, DNS, reset)",
        "GIT_TIMEOUT": "check the network and the server; `git.timeout`",
        "GIT_SERVER_ERROR": "check the server (5xx, 429, ERR lines)",
        "GIT_PROTOCOL_ERROR": "check the server or a proxy between (a malformed or cut answer)",
        "GIT_PACK_INVALID": "check the server or a proxy between (a truncated or corrupt pack)",
        "GIT_STORE_CORRUPT": "none: the damaged local repository is discarded and fetched again",
        "GIT_STORE_BUSY": "another margo-lite process holds the local repository: stop it",
        "GIT_COMMIT_MISSING": "none: the next poll fetches the commit again",
        **ProxyError.codes,
    }


# --- desired state source (the WFM's State Manifest, Margo 1.0) -----------------------------


class WfmError(SourceError, StalledError):
    """The WFM's desired state cannot be accepted; nothing of that manifest is applied and
    what runs keeps running. Polls go on at `poll.max_backoff`."""

    code = "WFM_ERROR"
    codes = {
        "WFM_ERROR": "fix what the message names",
        "WFM_MANIFEST_INVALID": "the WFM served something that is not a State Manifest (or a "
        "digest of another algorithm than sha256): check the WFM",
        "WFM_DIGEST_MISMATCH": "the WFM served a document or bundle whose sha256 is not the "
        "manifest's: check the WFM and what sits between",
        "WFM_BUNDLE_INVALID": "the bundle is not a tar+gzip of exactly the manifest's "
        "documents: check the WFM",
        "WFM_ROLLBACK_REFUSED": "the WFM went back to an older manifestVersion: publish a newer "
        "one (a replay or rollback is never applied)",
        "WFM_URL_REFUSED": "the manifest named an absolute url or one outside /api/v1/: check "
        "the WFM",
        "WFM_TOO_LARGE": "make the deployments smaller (or raise the limit the message names)",
        "WFM_NOT_FOUND": "fix `wos.url`: no desired-state API there (HTTP 404)",
        "WFM_NOT_ACCEPTABLE": "the WFM does not serve the v1 manifest (HTTP 406): check "
        "`wos.api` and the WFM's version",
        "WFM_REDIRECTED": "set `wos.url` to where the WFM redirects",
        "WFM_TLS_FAILED": "fix `wos.ca_file` or the WFM's certificate",
        "WFM_SERVER_ID_MISMATCH": "the WFM's certificate is not the expected SPIFFE ID (nothing "
        "was sent): fix `wos.server_id` or the WFM's certificate",
        "WFM_STORE_FAILED": "free disk space or fix the permissions of the state folder",
        "WFM_REFUSED": "check the WFM: it answered an HTTP status the API does not name (the "
        "message says which)",
    }


class WfmTransientError(SourceError, TransientError):
    """Worth retrying with backoff: the next poll tries again."""

    code = "WFM_UNREACHABLE"
    codes = {
        "WFM_UNREACHABLE": "check the network and the WFM (refused, DNS, reset)",
        "WFM_TIMEOUT": "check the network and the WFM; `wos.timeout`",
        "WFM_SERVER_ERROR": "check the WFM (5xx, 429)",
        "WFM_PROTOCOL_ERROR": "check the WFM or a proxy between (a cut answer, a 304 to an "
        "unconditional request)",
        "WFM_DOCUMENT_MISSING": "none: a newer manifest came while fetching; the next poll "
        "reads it",
        "WFM_CACHE_CORRUPT": "none: the cached document is fetched again",
        "WFM_NOT_HELD": "none: the manifest is fetched again at the next poll",
        "WFM_FORBIDDEN": "the WFM refused this device's identity (HTTP 401/403): check its "
        "client certificate (a rotated one is read without a restart) and the WFM's records",
        "WFM_SERVER_ID_MISMATCH": "the server is not the expected WFM (its certificate's "
        "SPIFFE ID): check `wos.server_id` and `wos.url`; nothing was sent",
        **ProxyError.codes,
    }


# --- desired state documents ----------------------------------------------------------------


class DesiredStateError(StalledError):
    """A document breaks the contract. `source` names the file and document, `field` the field.

    The deployment is Failed until a new revision fixes the document; the others go on."""

    code = "INVALID_FIELD"
    codes = {
        "INVALID_FIELD": "fix the field the message names",
        **InvalidYamlError.codes,
        "NOT_A_MAPPING": "make the document (or the field) a mapping",
        "MISSING_FIELD": "add the field the message names",
        "INVALID_DEPLOYMENT_ID": "use a valid deployment id (the message says which rule)",
        "INVALID_APPLICATION_ID": "use a valid application id",
        "UNSUPPORTED_API_VERSION": "use an apiVersion margo-lite supports",
        "UNSUPPORTED_PROFILE": "use the compose profile",
        "DUPLICATE_DEPLOYMENT_ID": "give each deployment its own id",
        "DUPLICATE_COMPONENT": "give each component its own name",
        "UNKNOWN_COMPONENT_IN_PARAMETER": "name a component of the deployment in the parameter",
        "UNSUPPORTED_POINTER": "use a pointer form margo-lite supports",
        "CONFLICTING_PARAMETERS": "let one parameter set each variable or path",
        "MISSING_PACKAGE": "commit the package (or key) the location names",
        "COMPOSE_INVALID": "make the parameter value plain JSON (no dates, string keys)",
        "DEPENDENCY_CYCLE": "break the cycle in `dependsOn`",
        "WRONG_DEVICE": "the document's `metadata.deviceId` names another device: fix it, or "
        "move the document to that device's desired state",
    }

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
#: tests. The last two are the planner's Pending reasons (not errors).
DESIRED_STATE_CODES = (*DesiredStateError.codes, "WAITING_FOR_DEPENDENCY", "NOT_STARTED")


# --- application packages and local policy --------------------------------------------------


class PackageError(StalledError):
    """A package, its signature or its key is refused. The component is Failed until a new
    revision (or a new package at its location, with a configuration change) fixes it."""

    code = "PACKAGE_INVALID"
    codes = {
        "PACKAGE_INVALID": "fix the package (or its packageLocation) as the message says",
        "PACKAGE_TOO_LARGE": "make the package smaller, or raise `packages.max_size`",
        "UNSAFE_ARCHIVE": "rebuild the archive without links out, devices or absolute paths",
        "COMPOSE_FILE_MISSING": "put a compose file at the package's root",
        "KEY_INVALID": "fix the key at keyLocation or in `packages.trusted_keys`",
        "SIGNATURE_MISSING": "publish the signature beside the package (`.asc` or `.sig`)",
        "SIGNATURE_INVALID": "sign the package with a trusted key",
        "GPGV_MISSING": "install gpgv",
    }


class PolicyError(PackageError):
    """A compose file breaks the local policy; `rule` is the config key, `service` the service."""

    code = "POLICY_DENIED"
    codes = {"POLICY_DENIED": "change the compose file, or the `policy.*` key the message names"}

    def __init__(self, message: str, *, rule: str = "", service: str = "") -> None:
        super().__init__(message)
        self.rule = rule
        self.service = service


class PackageTransientError(TransientError):
    """The package could not be had now, or its ready folder must be built again."""

    code = "PACKAGE_DOWNLOAD_FAILED"
    codes = {
        "PACKAGE_DOWNLOAD_FAILED": "check the network and the package server; retried",
        "PACKAGE_CACHE_IO": "free disk space or fix the permissions of the package cache",
        "PACKAGE_MISSING": "none: the package is prepared again",
        "PACKAGE_TAMPERED": "none: a file in the ready folder changed (a container wrote into "
        "it); the package is prepared again from its source",
        **ProxyError.codes,
    }


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
    """An OCI registry's answer or artifact that margo-lite will not use."""

    code = "OCI_MANIFEST_INVALID"
    codes = {
        "OCI_REFERENCE_INVALID": "fix the component's oci:// repository or its revision",
        "OCI_NOT_FOUND": "push the artifact, or fix the repository or revision",
        "OCI_DIGEST_MISMATCH": "the registry served bytes other than their digest says: "
        "check the registry and what sits between",
        "OCI_DIGEST_UNSUPPORTED": "publish the artifact with sha256 digests",
        "OCI_AUTH_FAILED": "fix the credentials in the oci:// location or the registry's "
        "access rules",
        "OCI_MANIFEST_INVALID": "publish a Compose OCI artifact, or one tar+gzip layer, with "
        "plain file names",
        "OCI_REFUSED": "check the registry: it refused the request (the message names the "
        "HTTP status)",
    }


class OciTransientError(PackageTransientError):
    """The registry or its token service cannot be reached or fails (5xx); retried later."""

    code = "OCI_UNREACHABLE"
    codes = {"OCI_UNREACHABLE": "check the network and the registry; retried"}


# --- container engines and compose drivers --------------------------------------------------


class EngineError(MargoLiteError):
    """Area base (no family): an engine or compose command failed. Keeps argv, return code
    and the stderr tail."""

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


class EngineFailedError(EngineError, TransientError):
    """A step on the engine failed; it may pass on a later try. A rollback whose cause is
    stalled (`ComposeError`) waits for a change like its cause."""

    code = "ENGINE_FAILED"
    codes = {
        "ENGINE_FAILED": "read the engine's message in the log",
        "PORT_IN_USE": "free the port, or publish another one",
        "NAME_CONFLICT": "remove the container that holds the name",
        "IMAGE_MISSING": "make the image reachable (registry, network, `runtime.*` auth) or "
        "load it on the device",
        "HEALTHCHECK_FAILED": "fix the application so it starts and turns healthy",
        "ROLLED_BACK": "the previous version runs again; see the cause in the message",
    }


class EngineTransientError(EngineFailedError):
    code = "ENGINE_UNAVAILABLE"
    codes = {"ENGINE_UNAVAILABLE": "start the engine (podman socket, dockerd)"}


class ComposeError(EngineError, StalledError):
    """The compose project itself is wrong (unreadable file, bad interpolation, a key the
    built-in driver does not support): a package problem, not retried until it changes."""

    code = "COMPOSE_INVALID"
    codes = {
        "COMPOSE_INVALID": "fix the compose file or the parameters the message names",
        "COMPOSE_UNSUPPORTED_KEY": "drop the key, or use an external compose tool "
        "(`runtime.compose`)",
        "IMAGE_INVALID": "fix the image reference",
        "UNSUPPORTED_POINTER": "use a pointer form margo-lite supports",
    }


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


# --- the service's sandbox ------------------------------------------------------------------


class DirNotWritableError(ConfigError):
    """`device.state_dir` or `device.runtime_dir` lies where the service may not write."""

    code = "CONFIG_DIR_NOT_WRITABLE"
    codes = {
        "CONFIG_DIR_NOT_WRITABLE": "add the folder to the unit's `ReadWritePaths=` (the message "
        "names the drop-in), or pick a writable folder",
    }


#: Codes in status reports that no exception carries, with their family.
REPORT_CODES: Mapping[str, tuple[type[MargoLiteError], str]] = {
    "CONTAINER_DOWN": (
        TransientError,
        "a component stopped and could not be restored; retried with backoff",
    ),
}

#: Area bases: caught, never raised, in no family.
AREAS = (MargoLiteError, TransientError, StalledError, SourceError, StateError, EngineError)


def family(exc: BaseException) -> type[MargoLiteError] | None:
    """`StalledError` when `exc`, or an error it was raised from, is stalled (a rollback
    whose cause is a compose file that breaks the rules waits like its cause);
    `TransientError` for the rest of the family; None for an exception no code was
    written for (the caller codes it as `InternalError`: transient)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, StalledError):
            return StalledError
        seen.add(id(cause))
        cause = cause.__cause__
    return TransientError if isinstance(exc, TransientError) else None
