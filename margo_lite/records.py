"""The agent's records: their types, their JSON, their names, and the rule that saves them.

A `DeploymentRecord` (with a `ComponentRecord` per component) is what the device knows of a
deployment; `margo-lite status` shows it and every status report derives from it. On disk
it is `deployments/<id>.json` in the state store; reading one that is not a valid record
raises `StateCorruptError`, never "absent". `RecordBook.save` keeps the crash-ordering
rule *report before record*: the status report the WOS must hear (`status_event`) is
queued in the durable outbox before the record that holds the new state is written, so
after a crash between the two the WOS may hear a state twice but never misses one. The
names of the other records (`AGENT_RECORD`, `POLL_RECORD`) live here too; the status view
reads them from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType

from margo_lite import logs, valueclass, wos
from margo_lite.errors import MargoLiteError, StateCorruptError
from margo_lite.statestore import StateStore
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

log = logs.get(__name__)

#: In state_dir: `{"commit": <revision>}`, the desired revision applied in full. The key is
#: "commit" for the records of older versions (and for them, after a downgrade); it holds a
#: source's revision, a Git commit id or another source's version name.
AGENT_RECORD = "agent.json"
AGENT_REVISION_KEY = "commit"
#: In runtime_dir (RAM, not flash): the last poll, its result, the next poll.
POLL_RECORD = "poll.json"
DEPLOYMENTS = "deployments"  # folder of `<id>.json` deployment records
_EMPTY: Mapping[str, str] = MappingProxyType({})


class State(StrEnum):
    PENDING = "Pending"
    INSTALLING = "Installing"
    INSTALLED = "Installed"
    FAILED = "Failed"
    REMOVING = "Removing"
    REMOVED = "Removed"


SETTLED = (State.INSTALLED, State.REMOVED)  # nothing under way: the revision may be applied


@dataclass(frozen=True)
class Reason:
    """The code and message of a Failed state, or the reason of a Pending one."""

    code: str
    message: str

    @classmethod
    def of(cls, error: MargoLiteError) -> Reason:
        return cls(error.code, error.message)


@dataclass(frozen=True)
class ComponentRecord:
    """What the agent knows about one component on the device."""

    name: str
    state: State
    digest: str | None = None  # the spec installed and running; None: nothing installed
    target: str | None = None  # the spec it is meant to run; None: it is to be removed
    error: Reason | None = None  # Failed: the error; Pending: the reason
    data: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # backend facts

    def __hash__(self) -> int:  # `data` is not hashable
        return hash((self.name, self.state, self.digest, self.target, self.error))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "digest": self.digest,
            "target": self.target,
            "error": _reason_json(self.error),
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, value: Any) -> ComponentRecord:
        if not isinstance(value, dict):
            raise _corrupt("a component is not an object")
        data = value.get("data") or {}
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise _corrupt("component data is not a mapping of strings")
        return cls(
            name=_str(value, "name"),
            state=_state(value.get("state")),
            digest=_opt_str(value, "digest"),
            target=_opt_str(value, "target"),
            error=_reason_from(value.get("error")),
            data=MappingProxyType(dict(data)),
        )


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment as last recorded; what `margo-lite status` shows and reports derive from."""

    id: str
    state: State
    components: tuple[ComponentRecord, ...] = ()
    error: Reason | None = None
    digest: str | None = None  # the desired deployment digest this record follows
    depends_on: tuple[str, ...] = ()
    last_change: str | None = None  # set by the agent; not part of the state

    def component(self, name: str) -> ComponentRecord | None:
        return next((c for c in self.components if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "error": _reason_json(self.error),
            "components": [c.to_json() for c in self.components],
            "digest": self.digest,
            "depends_on": list(self.depends_on),
            "last_change": self.last_change,
        }

    @classmethod
    def from_json(cls, value: Any) -> DeploymentRecord:
        """The record, or `StateCorruptError`: a bad record must never read as "nothing"."""
        if not isinstance(value, dict):
            raise _corrupt("a deployment record is not an object")
        components = value.get("components")
        depends_on = value.get("depends_on") or []
        if not isinstance(components, list):
            raise _corrupt("components is not a list")
        if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
            raise _corrupt("depends_on is not a list of ids")
        return cls(
            id=_str(value, "id"),
            state=_state(value.get("state")),
            components=tuple(ComponentRecord.from_json(c) for c in components),
            error=_reason_from(value.get("error")),
            digest=_opt_str(value, "digest"),
            depends_on=tuple(depends_on),
            last_change=_opt_str(value, "last_change"),
        )


def _reason_json(reason: Reason | None) -> dict[str, str] | None:
    return None if reason is None else {"code": reason.code, "message": reason.message}


def _reason_from(value: Any) -> Reason | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("code"), str)
        or not isinstance(value.get("message"), str)
    ):
        raise _corrupt("error is not {code, message}")
    return Reason(value["code"], value["message"])


def _state(value: Any) -> State:
    try:
        return State(value)
    except ValueError:
        raise _corrupt(f"unknown state {value!r}") from None


def _str(value: dict, key: str) -> str:
    if not isinstance(value.get(key), str):
        raise _corrupt(f"{key} is not a string")
    return value[key]


def _opt_str(value: dict, key: str) -> str | None:
    return None if value.get(key) is None else _str(value, key)


def _corrupt(message: str) -> StateCorruptError:
    return StateCorruptError(f"deployment record: {message}")


# --- status events -------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    """One deployment status the WOS must hear (contract §4), as data; wos.py makes the body."""

    deployment_id: str
    state: State
    error: Reason | None
    components: tuple[tuple[str, State], ...]

    @classmethod
    def of(cls, record: DeploymentRecord) -> StatusEvent:
        return cls(
            record.id,
            record.state,
            record.error,
            tuple((c.name, c.state) for c in record.components),
        )


def status_event(old: DeploymentRecord | None, new: DeploymentRecord | None) -> StatusEvent | None:
    """The event to report for `old` -> `new`, or None when nothing the WOS sees changed."""
    if new is None:
        return None
    event = StatusEvent.of(new)
    if old is not None and _news(StatusEvent.of(old)) == _news(event):
        return None
    return event


def _news(event: StatusEvent) -> tuple:
    """What the WOS sees; the order of the components is not news."""
    return event.state, event.error, sorted(event.components)


# --- load and save -------------------------------------------------------------------------


if TYPE_CHECKING:  # interfaces for type checkers; nothing checks them at run time

    class Queue(Protocol):
        """Where reports wait for delivery (`outbox.Outbox`): durable when `add` returns."""

        def add(self, deployment_id: str, body: dict) -> None: ...

    class Places(Protocol):
        """Where records and reports go (`cycle.Parts`), read at each save, so a test may swap
        either part."""

        store: StateStore
        outbox: Queue


class RecordBook:
    """The deployment records, in memory (`by_id`) and on disk, kept in step."""

    def __init__(
        self,
        places: Places,
        *,
        status_case: str,
        wall: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self._places = places
        self._status_case = status_case
        self._wall = wall
        self.by_id: dict[str, DeploymentRecord] = {}
        #: The desired revision loaded: each queued report carries it (Margo 1.0 reports
        #: name the manifest version they are about).
        self.revision: str | None = None
        self.generation = 0  # counts changes to the records: a plan holds until it moves

    def load(self) -> None:
        """Read every record; a corrupt one raises (never read as "absent")."""
        self.by_id = load(self._places.store)
        self.generation += 1

    def save(self, new: DeploymentRecord) -> DeploymentRecord:
        """Queue the status report the WOS must hear (if any), then write the record.

        The report goes first: after a crash between the two the WOS may hear a state
        twice, but it never misses one that the record holds.
        """
        old = self.by_id.get(new.id)
        if old is not None and new == valueclass.replace(old, last_change=new.last_change):
            return old
        event = status_event(old, new)
        if event is not None:
            stamp = self._wall().astimezone().isoformat(timespec="seconds")
            new = valueclass.replace(new, last_change=stamp)
            body = wos.status_body(
                event.deployment_id,
                event.state.value,
                (event.error.code, event.error.message) if event.error else None,
                [(name, state.value) for name, state in event.components],
                self._status_case,
            )
            self._places.outbox.add(event.deployment_id, body, revision=self.revision)
            log.info(
                "deployment %s is %s%s",
                new.id,
                new.state.value,
                f" ({new.error.code}: {new.error.message})" if new.error else "",
            )
        self._places.store.write_json(_name(new.id), new.to_json())
        self.by_id[new.id] = new
        self.generation += 1
        return new

    def forget(self, record: DeploymentRecord) -> None:
        """Delete a record once its Removed state is reported and recorded."""
        self._places.store.delete(_name(record.id))
        self.by_id.pop(record.id, None)
        self.generation += 1


def load(store: StateStore) -> dict[str, DeploymentRecord]:
    """Every deployment record in `store`; a corrupt one raises (never read as "absent")."""
    records = {}
    for name in store.names(DEPLOYMENTS):
        value = store.read_json(name)
        if value is not None:
            record = DeploymentRecord.from_json(value)
            records[record.id] = record
    return records


def _name(deployment_id: str) -> str:
    return f"{DEPLOYMENTS}/{deployment_id}.json"
