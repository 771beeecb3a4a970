"""Errors of the desired state: reading it (a Git repository, or the WFM's State Manifest)
and the documents it holds. `DESIRED_STATE_CODES` lists what a plan's Failed or Pending
reason may say.
"""

from __future__ import annotations

from .base import InvalidYamlError, MargoLiteError, ProxyError, StalledError, TransientError

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
        "GIT_CHILD_FAILED": "the process that fetches or reads the local repository ended "
        "without an answer (killed, out of memory) or met a bug: see the log; retried",
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
        "DEPLOYMENT_ID_MISMATCH": "the WFM listed the document under another deploymentId "
        "than its own `id`: fix the WFM's manifest or the document",
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
