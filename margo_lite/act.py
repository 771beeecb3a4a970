"""The act step: carry out the plan from the loaded desired state, one step at a time.

`reconcile` plans against the records (`planner.plan`) and, deployment by deployment inside
an error boundary (`boundary`), saves each planned record and runs each change through
`run_step`: prepare the component (`prepare`: the package store, the canonical document, the
policy gate, in `checked_unit`), then the backend, saving and reporting the state before and
after. The error's family decides what follows a failure (`schedule_after_failure`): a
transient one is retried with backoff (`retry_later`), a stalled one waits for a new
revision or a configuration change (`wait_for_change`); a new revision that changes the
component tries at once. After a cycle that changed something, `remove_orphans` removes
labelled objects no record accounts for and `prune_packages` drops cache entries no record
uses, once the reports are out (Installed does not wait for the sweep). Once everything is
settled, the applied revision is recorded. A plan that had nothing to do holds until the
desired state or a record changes (`Context.idle_plan`): an idle tick plans nothing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from margo_lite import backends, desired, idlemark, logs, planner, policy, schedule, valueclass
from margo_lite.cycle import Context, coded, internal_error, retry_backoff
from margo_lite.errors import MargoLiteError, PackageError, StalledError, family
from margo_lite.planner import Action, Step
from margo_lite.records import (
    AGENT_RECORD,
    AGENT_REVISION_KEY,
    SETTLED,
    DeploymentRecord,
    Reason,
    State,
)
from margo_lite.tidy import PACKAGE_FACT, prune_packages, remove_orphans

log = logs.get(__name__)

POLICY_CHECK = Reason(
    policy.PENDING_REASON, "preparing the package and checking it against local policy"
)


def reconcile(ctx: Context, report: Callable[[], None]) -> None:
    """Carry out the plan from the loaded desired state; `report` delivers what is queued
    (called before each apply or removal). Retries are scheduled here."""
    ctx.timers.next_retry = None
    if ctx.desired is None or ctx.snapshot is None:
        return
    records = ctx.book.by_id
    idle = ctx.idle_plan
    if idle is not None and idle[0] is ctx.desired and idle[1] == ctx.book.generation:
        return  # nothing changed since a plan that had nothing to do: no plan, no write
    ctx.idle_plan = None
    generation = ctx.book.generation
    try:
        plan = planner.plan(ctx.desired, records)
    except MargoLiteError:
        raise
    except Exception as exc:  # nothing to tell deployments apart yet: what runs stays
        log.error("the desired state cannot be planned: %s", internal_error(exc))
        return
    for dp in plan.deployments:
        if ctx.should_stop():
            return  # SIGTERM: what is done is recorded; the rest waits for the next start
        ctx.heartbeat()
        with boundary(ctx, dp.id):
            if not _reconcile_one(ctx, report, plan, dp):
                return
    if plan.changes:
        report()  # Installed goes out now, not after the sweep below
    if plan.changes or ctx.tidy_needed:
        # Only after a change or a start: an idle cycle costs no engine call, no write.
        swept = remove_orphans(ctx, plan.desired_ids) if ctx.desired.complete else True
        prune_packages(ctx)
        ctx.tidy_needed = not swept
    revision = ctx.snapshot.revision
    if (
        revision != ctx.applied_revision
        and ctx.desired.complete
        and all(r.state in SETTLED for r in records.values())
    ):
        ctx.applied_revision = revision
        ctx.parts.store.write_json(AGENT_RECORD, {AGENT_REVISION_KEY: revision})
    if not plan.changes and not ctx.tidy_needed and ctx.book.generation == generation:
        ctx.idle_plan = (ctx.desired, generation)
    if revision == ctx.applied_revision and ctx.desired.complete and not ctx.tidy_needed:
        # The idle mark, once a plan has nothing to do: this one, or (after changes that
        # all settled) the next one, made now so that a stop before it costs no read.
        if ctx.idle_plan is None and not (plan := planner.plan(ctx.desired, records)).changes:
            ctx.idle_plan = (ctx.desired, ctx.book.generation)
        if ctx.idle_plan is not None:
            idlemark.record(ctx, revision, plan.desired_ids)


def _reconcile_one(
    ctx: Context, report: Callable[[], None], plan: planner.Plan, dp: planner.DeploymentPlan
) -> bool:
    """Carry out one deployment's plan; False when a stop was asked for meanwhile."""
    records = ctx.book.by_id
    blockers = plan.blocked_by(dp, records)
    record = planner.planned_record(dp, records.get(dp.id), blockers=blockers)
    if record is None:
        return True
    if dp.failure is not None or dp.held or blockers or not dp.changes:
        record = ctx.book.save(record)
    else:
        # The planned record stays in memory: the first step's change is the news.
        for step in dp.changes:
            if ctx.should_stop():
                return False
            record, ran = run_step(ctx, report, record, step)
            current = record.component(step.component)
            if ran and current is not None and current.state is State.FAILED:
                break  # later components wait for this one (listed order)
    if record.state is State.REMOVED:
        ctx.book.forget(record)
    return True


@contextlib.contextmanager
def boundary(ctx: Context, deployment_id: str) -> Iterator[None]:
    """The per-deployment error boundary: nothing in one deployment's documents stops the
    others. A step's own failures are handled in the step (`run_step`, `heal.heal_one`);
    what escapes here is a surprise outside a step (planning its record, building its
    report): the deployment is Failed with INTERNAL_ERROR and the loop goes on. Errors of
    the device itself (a full disk, a corrupt record) still go up to the loop."""
    try:
        yield
    except MargoLiteError:
        raise
    except Exception as exc:
        error = internal_error(exc)
        log.error("deployment %s failed: %s", deployment_id, error)
        old = ctx.book.by_id.get(deployment_id) or DeploymentRecord(deployment_id, State.PENDING)
        failed = valueclass.replace(old, state=State.FAILED, error=Reason.of(error))
        try:
            ctx.book.save(failed)
        except MargoLiteError:
            raise
        except Exception as again:  # even its report cannot be built: the log says it
            log.error(
                "deployment %s: its failure cannot be recorded: %s",
                deployment_id,
                internal_error(again),
            )


def run_step(
    ctx: Context, report: Callable[[], None], record: DeploymentRecord, step: Step
) -> tuple[DeploymentRecord, bool]:
    """Run one step; (the record after it, whether it ran). A retry not yet due is
    skipped, so other components of the deployment still get their changes."""
    key = (step.deployment_id, step.component)
    timers, book, hooks = ctx.timers, ctx.book, ctx.hooks
    due = timers.retry_due.get(key, 0.0)
    if step.retry and ctx.clock() < due:
        if due < math.inf:
            timers.retry_at(due)
        return record, False
    ctx.heartbeat()
    touched = False  # whether what runs may have changed when an error comes
    try:
        if step.action is Action.REMOVE:
            record = book.save(planner.started(record, step))
            report()
            hooks.checkpoint("before-remove")
            touched = True
            with ctx.long_step():
                ctx.backend.remove(step.deployment_id, step.component)
            hooks.checkpoint("after-remove")
            done = planner.succeeded(record, step)
        else:
            current = record.component(step.component)
            if current is None or current.state is State.PENDING:
                record = book.save(planner.waiting(record, step, POLICY_CHECK))
            with ctx.long_step():
                unit, package = prepare(ctx, step)
            record = book.save(planner.started(record, step))
            report()
            hooks.checkpoint("before-apply")
            touched = True
            hooks.raise_if_asked("apply", step.deployment_id)
            with ctx.long_step():
                ctx.backend.apply(unit)
            hooks.checkpoint("after-apply")
            done = planner.succeeded(record, step, {PACKAGE_FACT: package})
    except Exception as exc:  # the step's boundary: any surprise is this step's failure
        # An update that failed before touching anything, or that the backend rolled
        # back, leaves the previous version running.
        error = coded(exc)
        restored = step.action is Action.UPDATE and (not touched or error.code == "ROLLED_BACK")
        log.error(
            "%s %s/%s failed: %s", step.action.value, step.deployment_id, step.component, error
        )
        schedule_after_failure(ctx, key, exc)
        return book.save(planner.failed(record, step, Reason.of(error), restored=restored)), True
    timers.retry_backoff.pop(key, None)
    timers.retry_due.pop(key, None)
    log.info("%s %s/%s done", step.action.value, step.deployment_id, step.component)
    return book.save(done), True


def schedule_after_failure(ctx: Context, key: tuple[str, str], exc: Exception) -> None:
    """The error's family decides: a stalled component waits for a change
    (`wait_for_change`), anything else is tried again with backoff (`retry_later`)."""
    if family(exc) is StalledError:
        wait_for_change(ctx, key)
    else:
        retry_later(ctx, key)


def wait_for_change(ctx: Context, key: tuple[str, str]) -> None:
    """A stalled component is not tried again: only a new revision that changes it (a new
    spec is not a retry) or a configuration change (a reload starts afresh) can fix it."""
    log.warning("%s/%s waits for a new revision or a configuration change", *key)
    ctx.timers.retry_backoff.pop(key, None)
    ctx.timers.retry_due[key] = math.inf


def retry_later(ctx: Context, key: tuple[str, str]) -> None:
    """A component that failed for a transient cause is tried again with backoff: 10 s,
    doubling, up to poll.max_backoff (an image loaded by hand, a port freed, the engine
    back); a new revision that changes it tries at once."""
    timers = ctx.timers
    backoff = timers.retry_backoff.get(key, retry_backoff(ctx.cfg.poll.max_backoff)).failed()
    timers.retry_backoff[key] = backoff
    due = ctx.clock() + schedule.jittered(backoff.delay(), 0.2, ctx.rand())
    timers.retry_due[key] = due
    timers.retry_at(due)


def prepare(ctx: Context, step: Step) -> tuple[backends.ComponentUnit, str]:
    """The component's canonical document, built once and checked by the policy gate:
    the very object the backend runs and records; and its package's digest."""
    component = step.desired
    assert component is not None and ctx.snapshot is not None
    ctx.hooks.raise_if_asked("prepare", step.deployment_id)
    if not component.package_location:
        raise PackageError(
            f"component {component.name} has no packageLocation", code="PACKAGE_INVALID"
        )
    package = ctx.parts.packages.prepare(
        component.package_location, component.key_location, ctx.snapshot.files
    )
    return checked_unit(ctx, step.deployment_id, component, package.path), package.digest


def checked_unit(
    ctx: Context, deployment_id: str, component: desired.Component, package_dir: Path
) -> backends.ComponentUnit:
    """The component's canonical document from its package folder, through the policy."""
    unit = backends.ComponentUnit.from_package(
        deployment_id,
        component.name,
        package_dir,
        component.env,
        component.overlays,
        component.digest,
        device=ctx.cfg.device.id,
    )
    policy.check_compose(unit.document, ctx.cfg.policy, package_dir=package_dir)
    return unit
