"""The root of margo-lite's errors, its two scheduling families and the errors of the
device itself: a bug, local files, the site's proxy, the configuration and command line,
the service's sandbox and the state store. `family` tells which family an error, or the
error it was raised from, belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
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


# --- the service's sandbox ------------------------------------------------------------------


class DirNotWritableError(ConfigError):
    """`device.state_dir` or `device.runtime_dir` lies where the service may not write."""

    code = "CONFIG_DIR_NOT_WRITABLE"
    codes = {
        "CONFIG_DIR_NOT_WRITABLE": "add the folder to the unit's `ReadWritePaths=` (the message "
        "names the drop-in), or pick a writable folder",
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
