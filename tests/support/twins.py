"""In-memory twins of the agent's parts, in the manner of dulwich's `MemoryRepo`: each keeps
the interface of the real part it stands for, holds its state in plain Python values a test
can read, and lets a test script what happens next. With them the reconciler runs in-process
in milliseconds, with every outcome on demand: a failure of each family at each call, a crash
between any two writes, a WOS that is down, hours of schedule on a clock the test advances.

The real parts have their own tests (real engines, C git, the WOS simulator over HTTP); these
twins add speed and reach, not trust. The package store, the outbox and the policy stay real.

- `MemoryStateStore`: a `StateStore` whose records live in a dict; `crash_on` stops the
  process (a `Crash`) just before or just after a chosen write.
- `RecordingBackend`: an engine in memory; outcomes scripted per call; a call log.
- `ScriptedSource`: a `source.DesiredSource` made of a list of revisions; poll errors on demand.
- `RecordingSender`: the WOS as the outbox and the agent call it; records what it receives;
  can be down or reject one deployment's reports.
- `Clock`: monotonic and wall time that move only when the test says.

`tests/support/twindevice.py` wires them into a device.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from margo_lite.backends import ComponentHealth, ComponentUnit, ServiceHealth
from margo_lite.errors import (
    GitError,
    StateCorruptError,
    WosRejectedError,
    WosTransientError,
)
from margo_lite.source import PollResult, Snapshot
from margo_lite.statestore import StateStore


class Crash(BaseException):
    """A simulated SIGKILL or power cut. A `BaseException`, so that no `except Exception`
    boundary in the agent can catch it: the process is simply gone."""


# --- the clock ------------------------------------------------------------------------------


class Clock:
    """Monotonic seconds and a local wall clock that advance together, only in `advance`.

    Starts on Wednesday 2026-11-25 at 12:00 local time unless told otherwise."""

    def __init__(self, wall: dt.datetime = dt.datetime(2026, 11, 25, 12, 0)) -> None:
        self._start = wall
        self._seconds = 1000.0

    def monotonic(self) -> float:
        return self._seconds

    def wall(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self._seconds - 1000.0)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not run backwards"
        self._seconds += seconds

    def advance_to(self, wall: dt.datetime) -> None:
        self.advance((wall - self.wall()).total_seconds())


# --- the state store ------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One entry of a memory store's journal: a write ("write") or a delete ("delete")."""

    op: str
    name: str
    value: Any = None  # the JSON value written


class MemoryStateStore(StateStore):
    """Named records in a dict, with `StateStore`'s names, encoding and errors.

    Writes are atomic, as the real store's are; `crash_on` makes one write the last thing
    the process does (`Crash` raised just before or just after it), `fail_on` makes one
    fail. `journal` lists every write and delete in order, so a test can check what reached
    the disk before what."""

    def __init__(self) -> None:
        super().__init__(Path("/memory-state-store"))  # names are checked; nothing is opened
        self.records: dict[str, bytes] = {}
        self.secret: set[str] = set()
        self.journal: list[Write] = []
        self._trap: tuple[Callable[[Write], bool], bool, BaseException] | None = None
        self._corrupt: set[str] = set()

    def crash_on(self, match: Callable[[Write], bool], *, after: bool = False) -> None:
        """The next write or delete that `match` accepts raises `Crash`: before it lands,
        or (`after`) once it has landed."""
        self.fail_on(match, Crash("crashed at a write"), after=after)

    def fail_on(
        self, match: Callable[[Write], bool], error: BaseException, *, after: bool = False
    ) -> None:
        """The next write or delete that `match` accepts raises `error` (a `StateError` is
        a full or read-only disk), before it lands or (`after`) once it has."""
        self._trap = (match, after, error)

    def corrupt(self, name: str) -> None:
        """The record and its previous copy no longer read (a rotten flash page)."""
        self._corrupt.add(name)

    def _apply(self, entry: Write, change: Callable[[], None]) -> None:
        trap = self._trap
        hit = trap is not None and trap[0](entry)
        if hit and not trap[1]:
            self._trap = None
            raise trap[2]
        change()
        self.journal.append(entry)
        if hit:
            self._trap = None
            raise trap[2]

    def write_bytes(self, name: str, payload: bytes, *, secret: bool = False) -> None:
        self.path(name)  # the real store's name rules

        def change() -> None:
            self.records[name] = bytes(payload)
            self._corrupt.discard(name)
            (self.secret.add if secret else self.secret.discard)(name)

        try:
            value = json.loads(payload)
        except ValueError:
            value = payload
        self._apply(Write("write", name, value), change)

    def read_bytes(self, name: str) -> bytes | None:
        self.path(name)
        if name in self._corrupt:
            raise StateCorruptError(f"state record unreadable: {name} (twin)")
        return self.records.get(name)

    def delete(self, name: str) -> None:
        self.path(name)

        def change() -> None:
            self.records.pop(name, None)
            self.secret.discard(name)

        self._apply(Write("delete", name), change)

    def names(self, folder: str = "") -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return sorted(
            n for n in self.records if n.startswith(prefix) and "/" not in n[len(prefix) :]
        )

    def remove_leftovers(self) -> int:
        return 0  # a write is one dict assignment: nothing is ever half done

    def json(self, name: str) -> Any:
        """A record's value as the agent wrote it (a test's view of the disk)."""
        data = self.records.get(name)
        return None if data is None else json.loads(data)


# --- the backend ----------------------------------------------------------------------------

#: A scripted outcome: the call takes effect, then the process dies (`Crash`).
CRASH_AFTER = "crash-after"


@dataclass(frozen=True)
class Call:
    """One call the agent made on the backend; `digest` is the unit's, for an apply."""

    method: str
    deployment_id: str = ""
    component: str = ""
    digest: str | None = None
    at: float = 0.0  # the clock's monotonic time of the call


class RecordingBackend:
    """An engine in memory with `Backend`'s interface: what is applied runs until a test
    stops it (`stop`) or something removes it.

    Outcomes: `script(method, deployment_id, *outcomes)` queues outcomes for that method's
    next calls for the deployment (for `managed`, deployment id ""): None succeeds, an
    exception is raised with nothing changed (as the real backend leaves things after a
    failed install, or after a failed update it rolled back), `CRASH_AFTER` takes effect
    and then raises `Crash`. `faults[(method, deployment_id)]` is raised on every call.
    `calls` lists every call in order."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.running: dict[tuple[str, str], ComponentUnit] = {}
        self.stopped: set[tuple[str, str]] = set()  # applied, but its containers exited
        self.leftovers: set[tuple[str, str]] = set()  # labelled objects no record knows
        self.unrecorded: set[tuple[str, str]] = set()  # backend record from an older version
        self.faults: dict[tuple[str, str], BaseException] = {}
        self.scripts: dict[tuple[str, str], list[Any]] = {}
        self.calls: list[Call] = []
        self._clock = clock

    def script(self, method: str, deployment_id: str, *outcomes: Any) -> None:
        self.scripts.setdefault((method, deployment_id), []).extend(outcomes)

    def stop(self, deployment_id: str, component: str = "web") -> None:
        """The component's containers exit (a crash of the application, an OOM kill)."""
        assert (deployment_id, component) in self.running
        self.stopped.add((deployment_id, component))

    def calls_of(self, method: str, deployment_id: str | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method == method and deployment_id in (None, c.deployment_id)
        ]

    def _call(self, method: str, deployment_id: str, component: str, digest: str | None) -> bool:
        """Log the call and raise its outcome; True when it is to crash after its effect."""
        at = self._clock.monotonic() if self._clock else 0.0
        self.calls.append(Call(method, deployment_id, component, digest, at))
        if (method, deployment_id) in self.faults:
            raise self.faults[(method, deployment_id)]
        queued = self.scripts.get((method, deployment_id))
        outcome = queued.pop(0) if queued else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome == CRASH_AFTER

    # --- Backend's interface ------------------------------------------------------------------

    def apply(self, unit: ComponentUnit) -> None:
        key = (unit.deployment_id, unit.component)
        crash = self._call("apply", *key, unit.digest)
        self.running[key] = unit
        self.stopped.discard(key)
        self.leftovers.discard(key)
        self.unrecorded.discard(key)
        if crash:
            raise Crash(f"crashed after applying {key}")

    def remove(self, deployment_id: str, component: str) -> None:
        key = (deployment_id, component)
        crash = self._call("remove", *key, None)
        self.running.pop(key, None)
        self.stopped.discard(key)
        self.leftovers.discard(key)
        if crash:
            raise Crash(f"crashed after removing {key}")

    def health(self, deployment_id: str, component: str) -> ComponentHealth:
        key = (deployment_id, component)
        self._call("health", *key, None)
        unit = self.running.get(key)
        if unit is None:
            return ComponentHealth({"web": ServiceHealth("missing")})
        state = ServiceHealth("exited", 137) if key in self.stopped else ServiceHealth("running")
        return ComponentHealth({service: state for service in unit.document["services"]})

    def managed(self) -> set[tuple[str, str]]:
        self._call("managed", "", "", None)
        return set(self.running) | self.leftovers

    def recorded(self, deployment_id: str, component: str) -> ComponentUnit | None:
        key = (deployment_id, component)
        return None if key in self.unrecorded else self.running.get(key)


# --- the desired-state source ---------------------------------------------------------------


class ScriptedSource:
    """The desired-state repository as a list of revisions, each a set of files.

    `commit(files)` adds a revision at the tip; a poll takes the tip as held. `fail_next`
    makes the next polls raise; `refuse` makes a revision's snapshot raise (an unsigned or
    badly signed commit). `polls` stamps every poll with the wall clock; `reads` lists the
    revisions read."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.revisions: dict[str, Mapping[str, bytes]] = {}
        self.tip: str | None = None
        self.held: str | None = None
        self.errors: list[Exception] = []
        self.refused: dict[str, Exception] = {}
        self.polls: list[dt.datetime | None] = []
        self.reads: list[str] = []  # every revision `snapshot` was asked for, in order
        self._clock = clock

    def commit(self, files: Mapping[str, str | bytes]) -> str:
        data = {p: v.encode() if isinstance(v, str) else bytes(v) for p, v in files.items()}
        revision = hashlib.sha1(b"%d" % len(self.revisions) + repr(sorted(data)).encode())
        self.tip = revision.hexdigest()
        self.revisions[self.tip] = types.MappingProxyType(data)
        return self.tip

    def fail_next(self, *errors: Exception) -> None:
        self.errors.extend(errors)

    def refuse(self, revision: str, error: Exception) -> None:
        self.refused[revision] = error

    # --- the source's interface ---------------------------------------------------------------

    def poll(self) -> PollResult:
        self.polls.append(self._clock.wall() if self._clock else None)
        if self.errors:
            raise self.errors.pop(0)
        if self.tip is None:
            raise GitError("branch 'main' does not exist (twin)", code="GIT_BRANCH_MISSING")
        changed, self.held = self.tip != self.held, self.tip
        return PollResult(self.tip, changed=changed)

    def close(self) -> None:
        pass  # no connection to release

    def held_revision(self) -> str | None:
        return self.held

    def snapshot(self, revision: str) -> Snapshot:
        self.reads.append(revision)
        if revision in self.refused:
            raise self.refused[revision]
        if revision not in self.revisions:
            raise GitError(f"commit {revision} is not held locally", code="GIT_COMMIT_MISSING")
        return Snapshot(revision, self.revisions[revision])


# --- the WOS --------------------------------------------------------------------------------


class RecordingSender:
    """The WOS's Device API as the outbox and the agent call it (`post_status`,
    `send_capabilities`, `close`): it records every report it takes. `down` makes every
    call fail as a network error does; `rejecting` holds deployment ids whose reports are
    answered 400."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.delivered: list[tuple[str, dict]] = []
        self.delivered_at: list[float] = []
        self.capabilities: list[dict] = []
        self.capabilities_at: list[float] = []
        self.down = False
        self.rejecting: set[str] = set()
        self.attempts = 0
        self.closed = False
        self._clock = clock

    def _now(self) -> float:
        return self._clock.monotonic() if self._clock else 0.0

    def post_status(self, deployment_id: str, body: dict, revision: str | None = None) -> None:
        self.attempts += 1
        if self.down:
            raise WosTransientError("the WOS does not answer (twin)", code="WOS_UNREACHABLE")
        if deployment_id in self.rejecting:
            raise WosRejectedError("HTTP 400 (twin)", status=400, body="no")
        self.delivered.append((deployment_id, json.loads(json.dumps(body))))
        self.delivered_at.append(self._now())

    def send_capabilities(self, body: dict, *, force: bool = False) -> bool:
        if self.down:
            raise WosTransientError("the WOS does not answer (twin)", code="WOS_UNREACHABLE")
        self.capabilities.append(body)
        self.capabilities_at.append(self._now())
        return True

    def close(self) -> None:
        self.closed = True

    def reports(self, deployment_id: str) -> list[dict]:
        """The `status` of every report delivered for the deployment, oldest first."""
        return [b["status"] for d, b in self.delivered if d == deployment_id]

    def states(self, deployment_id: str) -> list[str]:
        return [s["state"] for s in self.reports(deployment_id)]

    def last(self, deployment_id: str) -> dict | None:
        found = self.reports(deployment_id)
        return found[-1] if found else None
