"""From desired state and recorded state to an ordered plan and the records' states.

Pure: `plan()` compares component digests with the records the agent keeps (the types are
in `records`) and returns the steps to take, in order. The record helpers
(`planned_record`, `started`, `succeeded`, `failed`) are the state machine: each returns a
new record whose overall state is rolled up from its components per the contract
(`records.status_event()` says whether the WOS must hear about a change). The agent's
loop, for each `DeploymentPlan` in order:

    blockers = p.blocked_by(dp, records)
    record = planned_record(dp, records.get(dp.id), blockers=blockers)  # save; report
    for step in () if blockers else dp.changes:   # no changes when failed or held
        record = started(record, step)           # save; report
        ... run the step ...
        record = succeeded(record, step, facts)  # or failed(record, step, reason); stop
    # each save (`records.RecordBook.save`): report `status_event(old, new)` when not
    # None; a Removed record is reported, then deleted

A component is kept only when its record is Installed at the digest desired now, so
nothing unchanged is touched and anything Failed is tried again (`Step.retry` tells the
agent it is the same spec that failed, so it can back off).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from margo_lite import deporder
from margo_lite.desired import COMPOSE, Component, Deployment, DesiredState
from margo_lite.records import ComponentRecord, DeploymentRecord, Reason, State
from margo_lite.valueclass import dataclass, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_PROFILES = (COMPOSE,)


class Action(StrEnum):
    INSTALL = "install"
    UPDATE = "update"
    REMOVE = "remove"
    KEEP = "keep"


# --- rollup --------------------------------------------------------------------------------


def rollup(
    components: Iterable[ComponentRecord], *, removal: bool = False
) -> tuple[State, Reason | None]:
    """The overall state of a deployment from its components (contract §4).

    Failed wins and carries the first failed component's error; Installed and Removed need
    every component there (Installed counts once a component runs the spec it is meant to:
    digest == target); all Pending is Pending with the first one's reason; anything in
    between is Installing (or Removing for a removal).
    """
    components = tuple(components)
    failed = next((c for c in components if c.state is State.FAILED), None)
    if failed is not None:
        error = failed.error or Reason("FAILED", "failed")
        return State.FAILED, Reason(error.code, f"{failed.name}: {error.message}")
    states = {c.state for c in components}
    if removal:
        return (State.REMOVED, None) if states <= {State.REMOVED} else (State.REMOVING, None)
    if components and all(_through(c) for c in components):
        return State.INSTALLED, None
    if not states or states == {State.PENDING}:
        first = components[0].error if components else None
        return State.PENDING, first or Reason("NOT_STARTED", "not started yet")
    return State.INSTALLING, None


def _through(c: ComponentRecord) -> bool:
    """Installed at the spec it is meant to run (a leaving component has no target)."""
    return c.state is State.INSTALLED and c.target is not None and c.digest == c.target


def _rolled(
    record: DeploymentRecord, components: tuple[ComponentRecord, ...], *, removal: bool = False
) -> DeploymentRecord:
    state, error = rollup(components, removal=removal)
    return replace(record, components=components, state=state, error=error)


# --- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    deployment_id: str
    component: str
    action: Action
    desired: Component | None  # None for remove
    record: ComponentRecord | None  # None for install of a new component
    removal: bool = False  # part of removing the whole deployment
    retry: bool = False  # this exact spec failed before: the agent may back off


@dataclass(frozen=True)
class DeploymentPlan:
    id: str
    deployment: Deployment | None  # None when removed, or when its document failed
    steps: tuple[Step, ...] = ()  # every component, keeps included, in order
    failure: Reason | None = None  # document, profile or cycle: no step is taken
    removal: bool = False
    held: bool = False  # not in the desired state, but the desired state is incomplete

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action is not Action.KEEP)


@dataclass(frozen=True)
class Plan:
    deployments: tuple[DeploymentPlan, ...]
    desired_ids: frozenset[str] = frozenset()

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for dp in self.deployments for s in dp.changes)

    def blocked_by(
        self, dp: DeploymentPlan, records: Mapping[str, DeploymentRecord]
    ) -> tuple[str, ...]:
        """Dependencies of `dp` not desired or not Installed in `records` now.

        A deployment with nothing to change never waits: what runs keeps running.
        """
        if dp.deployment is None or not dp.changes:
            return ()
        return tuple(
            dep
            for dep in dp.deployment.depends_on
            if dep not in self.desired_ids
            or (rec := records.get(dep)) is None
            or rec.state is not State.INSTALLED
        )


def plan(desired: DesiredState, current: Mapping[str, DeploymentRecord]) -> Plan:
    """The ordered plan: removals (dependents first), then desired deployments in dependency
    order, components in listed order (and dropped components removed first, in reverse).
    """
    by_id = {d.id: d for d in desired.deployments}
    failed_docs: dict[str, Reason] = {}
    for f in desired.failures:
        if f.deployment_id is not None and f.deployment_id not in failed_docs:
            failed_docs[f.deployment_id] = Reason.of(f.error)
    cycles = deporder.cycles(desired.deployments)

    removed = [i for i in current if i not in by_id and i not in failed_docs]
    plans: list[DeploymentPlan] = []
    for dep_id in deporder.removal_order(removed, current):
        record = current[dep_id]
        if not desired.complete:
            plans.append(DeploymentPlan(dep_id, None, removal=True, held=True))
            continue
        steps = tuple(
            Step(dep_id, c.name, Action.REMOVE, None, c, removal=True)
            for c in reversed(record.components)
            if _on_device(c)
        )
        plans.append(DeploymentPlan(dep_id, None, steps, removal=True))

    for dep_id in sorted(failed_docs):
        plans.append(DeploymentPlan(dep_id, None, failure=failed_docs[dep_id]))

    for d in deporder.install_order(desired.deployments, cycles):
        failure = None
        if d.id in cycles:
            failure = Reason("DEPENDENCY_CYCLE", f"deployments wait for each other: {cycles[d.id]}")
        elif d.profile_type not in SUPPORTED_PROFILES:
            failure = Reason(
                "UNSUPPORTED_PROFILE",
                f"profile {d.profile_type} needs a Kubernetes cluster and a Helm backend; "
                f"this device runs containers only (supported: {', '.join(SUPPORTED_PROFILES)})",
            )
        if failure is not None:
            dp = DeploymentPlan(d.id, d, failure=failure)
        else:
            dp = DeploymentPlan(d.id, d, _component_steps(d, current.get(d.id)))
        plans.append(dp)
    return Plan(tuple(plans), frozenset(by_id))


def _on_device(c: ComponentRecord) -> bool:
    """Whether a component may have left anything on the device (never started: no)."""
    return c.state is not State.REMOVED and not (c.state is State.PENDING and c.digest is None)


def _component_steps(d: Deployment, record: DeploymentRecord | None) -> tuple[Step, ...]:
    steps: list[Step] = []
    names = {c.name for c in d.components}
    if record is not None:
        steps.extend(
            Step(d.id, c.name, Action.REMOVE, None, c)
            for c in reversed(record.components)
            if c.name not in names and _on_device(c)
        )
    for c in d.components:
        rec = record.component(c.name) if record is not None else None
        if rec is not None and rec.state is State.INSTALLED and rec.digest == c.digest:
            action = Action.KEEP
        elif rec is None or rec.digest is None:
            action = Action.INSTALL
        else:
            action = Action.UPDATE
        retry = rec is not None and rec.state is State.FAILED and rec.target == c.digest
        steps.append(Step(d.id, c.name, action, c, rec, retry=retry))
    return tuple(steps)


# --- the state machine ---------------------------------------------------------------------


def planned_record(
    dp: DeploymentPlan,
    record: DeploymentRecord | None,
    *,
    blockers: tuple[str, ...] = (),
) -> DeploymentRecord | None:
    """The record as the plan leaves it before anything runs (None: nothing to record).

    A removal with nothing left to remove is Removed at once (report it, then delete it).
    Failed documents, profiles and cycles fail the deployment and leave what runs alone;
    a deployment whose dependencies are not Installed (`blockers`, from `Plan.blocked_by`)
    is Pending with WAITING_FOR_DEPENDENCY; otherwise the state is rolled up afresh.
    """
    if dp.removal:
        if record is None or dp.held:
            return record
        # Components never started left nothing behind: Removed already. With no step left,
        # the whole deployment is Removed, to be reported and then deleted.
        components = tuple(
            c if _on_device(c) else replace(c, state=State.REMOVED, digest=None, error=None)
            for c in record.components
        )
        return _rolled(record, components, removal=True)
    d = dp.deployment
    if record is None:
        record = DeploymentRecord(dp.id, State.PENDING)
    if d is not None:
        record = replace(record, digest=d.digest, depends_on=d.depends_on)
    components = _planned_components(dp, record)
    if dp.failure is not None:
        if d is not None and d.profile_type not in SUPPORTED_PROFILES:
            components = tuple(
                replace(c, state=State.FAILED, error=dp.failure) if c.state is State.PENDING else c
                for c in components
            )
        return replace(record, components=components, state=State.FAILED, error=dp.failure)
    if dp.changes and blockers:
        reason = Reason(
            "WAITING_FOR_DEPENDENCY",
            f"waits for deployment{'s' if len(blockers) > 1 else ''} "
            f"{', '.join(blockers)} to be Installed",
        )
        components = tuple(
            replace(c, error=reason) if c.state is State.PENDING else c for c in components
        )
        return replace(record, components=components, state=State.PENDING, error=reason)
    return _rolled(record, components)


def _planned_components(
    dp: DeploymentPlan, record: DeploymentRecord
) -> tuple[ComponentRecord, ...]:
    d = dp.deployment
    if d is None:
        return record.components
    not_started = Reason("NOT_STARTED", "not started yet")
    listed = []
    for c in d.components:
        rec = record.component(c.name)
        if rec is None or rec.state is State.REMOVED:
            rec = ComponentRecord(c.name, State.PENDING)
        if rec.state is State.PENDING:
            rec = replace(rec, error=not_started)
        listed.append(replace(rec, target=c.digest))
    names = {c.name for c in d.components}
    leaving = tuple(
        replace(c, target=None) for c in record.components if c.name not in names and _on_device(c)
    )
    return (*listed, *leaving)


def waiting(record: DeploymentRecord, step: Step, reason: Reason) -> DeploymentRecord:
    """The step is about to start but waits on something first (a policy check): Pending."""
    if step.action is Action.KEEP:
        return record
    return _set(record, step, state=State.PENDING, error=reason)


def started(record: DeploymentRecord, step: Step) -> DeploymentRecord:
    """The step began: Installing (install, update) or Removing."""
    if step.action is Action.KEEP:
        return record
    if step.action is Action.REMOVE:
        return _set(record, step, state=State.REMOVING, error=None)
    assert step.desired is not None
    return _set(record, step, state=State.INSTALLING, target=step.desired.digest, error=None)


def succeeded(
    record: DeploymentRecord, step: Step, data: Mapping[str, str] | None = None
) -> DeploymentRecord:
    """The step completed: Installed at the desired digest, or Removed. `data` (backend
    facts to keep, such as the compose project name) replaces the component's data.

    A component removed from a deployment that stays is dropped from the record.
    """
    if step.action is Action.KEEP:
        return record
    if step.action is Action.REMOVE:
        if not step.removal:
            kept = tuple(c for c in record.components if c.name != step.component)
            return _rolled(record, kept)
        return _set(record, step, state=State.REMOVED, digest=None, error=None)
    assert step.desired is not None
    facts = None if data is None else MappingProxyType(dict(data))
    return _set(
        record,
        step,
        state=State.INSTALLED,
        digest=step.desired.digest,
        target=step.desired.digest,
        error=None,
        data=facts,
    )


def failed(
    record: DeploymentRecord, step: Step, reason: Reason, *, restored: bool = True
) -> DeploymentRecord:
    """The step failed. `restored`: the previous version runs again (else nothing runs)."""
    if step.action is Action.KEEP:
        return record
    changes: dict[str, Any] = {"state": State.FAILED, "error": reason}
    if not restored:
        changes["digest"] = None
    return _set(record, step, **changes)


_UNSET: Any = object()


def _set(
    record: DeploymentRecord,
    step: Step,
    *,
    state: State,
    error: Reason | None,
    digest: str | None = _UNSET,
    target: str | None = _UNSET,
    data: Mapping[str, str] | None = None,
) -> DeploymentRecord:
    changes: dict[str, Any] = {"state": state, "error": error}
    if digest is not _UNSET:
        changes["digest"] = digest
    if target is not _UNSET:
        changes["target"] = target
    if data is not None:
        changes["data"] = data
    found = False
    components = []
    name = step.component
    for c in record.components:
        if c.name == name:
            c = replace(c, **changes)
            found = True
        components.append(c)
    if not found:
        components.append(replace(ComponentRecord(name, state), **changes))
    return _rolled(record, tuple(components), removal=step.removal)
