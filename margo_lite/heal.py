"""The heal step: restore Installed components whose containers stopped, exited or vanished.

Every `runtime.observe_interval`, `heal` asks the backend for the health of each component
recorded Installed at the digest desired now (`Backend.health`). One that is not healthy
is restored with no network, from what was checked and recorded at install: the package
folder, verified unchanged against its manifest, and the recorded document, checked again
against the policy in force. A restoration that succeeds saves an unchanged state, so
nothing is reported; one that fails makes the component Failed (reported). Its error's
family decides what follows: a transient cause (a tampered or missing package folder, the
engine) is retried through the act step, which prepares the package again and reports
Installed when it succeeds; a stalled one (the policy in force refuses it) waits for a
change.
"""

from __future__ import annotations

from margo_lite import desired, logs, planner, policy
from margo_lite.act import boundary, checked_unit, schedule_after_failure
from margo_lite.cycle import Context, coded
from margo_lite.errors import MargoLiteError, PackageTransientError
from margo_lite.planner import Action, Step
from margo_lite.records import DeploymentRecord, Reason, State
from margo_lite.tidy import PACKAGE_FACT

log = logs.get(__name__)

#: A failed restore reports these codes as they are; any other cause is CONTAINER_DOWN.
_REFUSALS = ("PACKAGE_TAMPERED", "POLICY_DENIED", "COMPOSE_INVALID", "INTERNAL_ERROR")


def heal(ctx: Context) -> None:
    """Check every desired component recorded Installed at its desired digest; restore
    the ones that are not running as they should."""
    if ctx.desired is None:
        return
    wanted = {d.id: d for d in ctx.desired.deployments}
    for record in list(ctx.book.by_id.values()):
        deployment = wanted.get(record.id)
        if deployment is None:
            continue
        with boundary(ctx, record.id):
            for component in deployment.components:
                current = record.component(component.name)
                if (
                    current is not None
                    and current.state is State.INSTALLED
                    and current.digest == component.digest
                ):
                    record = heal_one(ctx, record, component)


def heal_one(
    ctx: Context, record: DeploymentRecord, component: desired.Component
) -> DeploymentRecord:
    """Check one component; restore it when it is not healthy. Returns the record after."""
    ctx.heartbeat()
    step = Step(
        record.id, component.name, Action.UPDATE, component, record.component(component.name)
    )
    problems = ""
    try:
        ctx.hooks.raise_if_asked("heal", record.id)
        try:
            health = ctx.backend.health(record.id, component.name)
        except MargoLiteError as exc:
            log.warning("cannot observe %s/%s: %s", record.id, component.name, exc)
            return record
        if health.ok:
            return record
        if health.settling:  # a stop or removal under way: look again at the next heal
            log.debug("%s/%s is changing state; not restored yet", record.id, component.name)
            return record
        problems = "; ".join(health.problems()) or "not running"
        log.warning(
            "%s/%s is not running as it should (%s); restoring it",
            record.id,
            component.name,
            problems,
        )
        current = record.component(component.name)
        digest = current.data.get(PACKAGE_FACT) if current is not None else None
        # What was checked and recorded at install, from the package it binds, unchanged
        # (a container may write into its package folder): no network, works offline.
        if not digest:
            raise PackageTransientError(
                "no package is recorded for this component", code="PACKAGE_MISSING"
            )
        package = ctx.parts.packages.verify(digest)
        unit = ctx.backend.recorded(record.id, component.name)
        if unit is None:  # recorded by an older version: built from the verified package
            unit = checked_unit(ctx, record.id, component, package.path)
        else:  # checked again against the policy in force
            policy.check_compose(unit.document, ctx.cfg.policy, package_dir=package.path)
        with ctx.long_step():
            ctx.backend.apply(unit)
    except Exception as exc:  # the heal step's boundary: any surprise fails this component
        # Reported now; the reconcile retries it with backoff and reports Installed.
        error = coded(exc)
        log.error("%s/%s could not be restored: %s", record.id, component.name, error)
        schedule_after_failure(ctx, (record.id, component.name), exc)
        # A package changed under it, a policy that now refuses it, or a surprise is that
        # code; anything else is the container that is down.
        code = error.code if error.code in _REFUSALS else "CONTAINER_DOWN"
        reason = (
            Reason.of(error)
            if code == "INTERNAL_ERROR"
            else Reason(code, f"{problems}; restoring failed: {error}")
        )
        return ctx.book.save(planner.failed(record, step, reason, restored=False))
    log.info("%s/%s restored", record.id, component.name)
    return ctx.book.save(planner.succeeded(record, step, {PACKAGE_FACT: package.digest}))
