"""What the local copy needs of a remote repository, whatever carries it.

`Remote` is the one interface of a Git transport: `HttpRemote` (the smart HTTP protocol)
and `LocalRemote` (a repository on this filesystem) both implement it, so the store and
the source never ask which one they hold. A poll asks for the branch tip; when it moved,
the store has the remote add that commit's objects to its object store, then checks
them and records the tip itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dulwich.object_store import PackBasedObjectStore


class Remote(Protocol):
    def authorize(self, header: str | None) -> None:
        """The Authorization header for the next requests (None: none); a no-op where
        there are no requests."""

    def tip(self, branch: str) -> str | None:
        """The commit id the branch points at; None when the branch does not exist."""

    def fetch_into(
        self,
        store: PackBasedObjectStore,
        want: str,
        held: str | None,
        shallow: set[str],
        spool: Path,
    ) -> None:
        """Add the objects of commit `want` (without its parents) that `store` lacks.

        `held` is the commit the store holds (to send less), `shallow` its shallow list,
        `spool` a private folder for a large download. Typed GitErrors on failure."""

    def close(self) -> None:
        """Release connections; the next call opens them again."""
