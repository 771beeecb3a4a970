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

The classes live by area in the modules of this package (`base`: the root, the families and
the device itself; `source`, `packages`, `engine`, `wos`); import them from here.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import (
    ConfigError,
    DirNotWritableError,
    InternalError,
    InvalidYamlError,
    LocalIOError,
    MargoLiteError,
    ProxyError,
    StalledError,
    StateCorruptError,
    StateError,
    StateIOError,
    TransientError,
    UsageError,
    family,
)
from .engine import ComposeError, EngineError, EngineFailedError, EngineTransientError
from .packages import (
    DownloadError,
    OciError,
    OciTransientError,
    PackageError,
    PackageTransientError,
    PolicyError,
)
from .source import (
    DESIRED_STATE_CODES,
    DesiredStateError,
    GitError,
    GitTransientError,
    RevisionError,
    SourceError,
    WfmError,
    WfmTransientError,
)
from .wos import OnboardingError, WosError, WosRejectedError, WosTransientError

#: What `from margo_lite.errors import ...` offers.
__all__ = [
    "AREAS",
    "DESIRED_STATE_CODES",
    "REPORT_CODES",
    "ComposeError",
    "ConfigError",
    "DesiredStateError",
    "DirNotWritableError",
    "DownloadError",
    "EngineError",
    "EngineFailedError",
    "EngineTransientError",
    "GitError",
    "GitTransientError",
    "InternalError",
    "InvalidYamlError",
    "LocalIOError",
    "MargoLiteError",
    "OciError",
    "OciTransientError",
    "OnboardingError",
    "PackageError",
    "PackageTransientError",
    "PolicyError",
    "ProxyError",
    "RevisionError",
    "SourceError",
    "StalledError",
    "StateCorruptError",
    "StateError",
    "StateIOError",
    "TransientError",
    "UsageError",
    "WfmError",
    "WfmTransientError",
    "WosError",
    "WosRejectedError",
    "WosTransientError",
    "family",
]

#: Codes in status reports that no exception carries, with their family.
REPORT_CODES: Mapping[str, tuple[type[MargoLiteError], str]] = {
    "CONTAINER_DOWN": (
        TransientError,
        "a component stopped and could not be restored; retried with backoff",
    ),
}

#: Area bases: caught, never raised, in no family.
AREAS = (MargoLiteError, TransientError, StalledError, SourceError, StateError, EngineError)
