"""What the agent asks of a desired-state source, whichever it is (Git or the WFM).

A poll says whether the source moved; a snapshot is every document file of one revision,
read from what the source holds locally (no network). Errors are `SourceError`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Snapshot:
    """The desired-state files of one revision (a commit id, or a manifest version)."""

    revision: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class PollResult:
    revision: str  # the source's current revision
    changed: bool  # differs from the revision held before this poll


class DesiredSource(Protocol):
    def poll(self) -> PollResult: ...

    def held_revision(self) -> str | None: ...

    def snapshot(self, revision: str) -> Snapshot: ...

    def close(self) -> None: ...
