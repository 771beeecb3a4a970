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


# --- desired state source (Git) -------------------------------------------------------------


class GitError(MargoLiteError):
    code = "GIT_ERROR"


class GitTransientError(GitError, TransientError):
    code = "GIT_UNREACHABLE"


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


# --- application packages and local policy --------------------------------------------------


class PackageError(MargoLiteError):
    code = "PACKAGE_INVALID"


class PackageTransientError(PackageError, TransientError):
    code = "PACKAGE_DOWNLOAD_FAILED"


class PolicyError(PackageError):
    code = "POLICY_DENIED"


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
    code = "WOS_ERROR"


class WosTransientError(WosError, TransientError):
    code = "WOS_UNREACHABLE"
