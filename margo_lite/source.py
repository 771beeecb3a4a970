"""The desired-state source: where the agent reads what should run on the device.

A source hands out revisions (a Git commit id, a WFM manifest version such as "17") and
the files of a revision it holds. The agent depends only on this protocol: `poll()` asks
the remote side for its current revision and fetches it when it changed; `held_revision()`
and `snapshot()` read what is held locally, without the network, so a device that restarts
offline applies what it held. Every failure of a source is a `SourceError` (`GitError` for
Git, `WfmError` for the WFM), which the agent catches to keep the last desired state in
force. `gitsource.GitSource` is the Git implementation, `wfmsource.WfmSource` the WFM's.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol


@dataclass(frozen=True)
class Snapshot:
    """The desired-state files of one revision."""

    revision: str  # a Git commit id, or a source's own version name
    files: Mapping[str, bytes]  # every regular file of the desired state; posix relative path
    #: file -> the deployment id the source lists it under (the WFM manifest's
    #: `deploymentId`); the document must carry that id. Empty for Git: names mean nothing.
    file_ids: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class PollResult:
    revision: str  # the remote side's current revision, now held locally
    changed: bool  # differs from the revision held before this poll


if TYPE_CHECKING:  # an interface for type checkers; nothing checks it at run time

    class DesiredSource(Protocol):
        """What the agent asks of a desired-state source; every failure is a `SourceError`."""

        def poll(self) -> PollResult:
            """Ask the remote side for its revision; fetch and hold it when it changed."""
            ...

        def held_revision(self) -> str | None:
            """The revision held locally (no network), or None before the first fetch."""
            ...

        def snapshot(self, revision: str) -> Snapshot:
            """The files of a held revision (no network)."""
            ...

        def close(self) -> None:
            """Release connections; the source may be polled again afterwards."""
            ...
