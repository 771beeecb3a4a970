"""The reconciler: observe the desired state, diff it against records, act, report.

One `Agent` per device. Each step is a method with one job:

- `observe()`   polls Git (within the polling hours, outside downtime, with backoff) and
                parses the held commit into a `DesiredState` when it changed;
- `reconcile()` plans against the recorded state and carries out the plan through the
                package store, the policy gate and the backend;
- `heal()`      checks that what is recorded Installed still runs, and restores it;
- `report()`    hands queued status reports to the WOS.

Every state change is queued in the durable outbox *before* the record that holds it is
written, so after a crash at any instant the WOS may hear a state twice but never misses
the last one; a record left Installing or Removing is redone on the next start (applying
and removing are idempotent in the backend). The agent never removes anything because of
something it could not read: a corrupt record stops it, an incomplete desired state holds
removals, and an unreachable Git server leaves the last applied state in force.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from margo_lite import (
    backends,
    config,
    desired,
    logs,
    planner,
    policy,
    pools,
    schedule,
    wfmclient,
    wos,
)
from margo_lite.errors import (
    EngineError,
    GitError,
    MargoLiteError,
    WosError,
)
from margo_lite.gitsource import GitSource, Snapshot
from margo_lite.outbox import Outbox
from margo_lite.packages import PackageStore
from margo_lite.planner import Action, DeploymentRecord, Reason, State, Step
from margo_lite.statestore import StateStore
from margo_lite.statusview import AGENT_RECORD, DEPLOYMENTS, POLL_RECORD

log = logs.get(__name__)

#: Test hook (documented in DEVELOPERS.md): the agent SIGKILLs itself at the named point,
#: one of before-apply, after-apply, before-remove, after-remove.
KILL_AT_ENV = "MARGO_LITE_TEST_KILL_AT"
#: Test hook (documented in DEVELOPERS.md): `<point>:<deployment id>` raises an unexpected
#: exception (RuntimeError) at prepare, apply or heal of that deployment, every time.
RAISE_AT_ENV = "MARGO_LITE_TEST_RAISE_AT"
PACKAGE_FACT = "package"  # ComponentRecord.data key: digest of the package in use
POLICY_CHECK = Reason(
    policy.PENDING_REASON, "preparing the package and checking it against local policy"
)


def _noop() -> None:
    pass


@dataclass
class Parts:
    """What the agent drives; built from the configuration, replaceable in tests."""

    store: StateStore
    runtime: StateStore
    source: GitSource
    packages: PackageStore
    outbox: Outbox
    client: wos.WosClient | wfmclient.WfmClient
    backend_factory: Callable[[], backends.Backend]

    @classmethod
    def build(cls, cfg: config.Config) -> Parts:
        state_dir = cfg.state_dir
        store = StateStore(state_dir)
        proxies = pools.settings_from(cfg.network, os.environ, source=cfg.source)
        log.info("network: %s", proxies.describe())
        return cls(
            store=store,
            runtime=StateStore(cfg.device.runtime_dir),
            source=GitSource(cfg.git, state_dir, proxies=proxies),
            packages=PackageStore(cfg.packages, state_dir / "packages", proxies=proxies),
            outbox=Outbox(store, cfg.wos.outbox_limit),
            client=wfmclient.make_client(cfg, proxies),
            backend_factory=lambda: backends.select(
                cfg.runtime, state_dir, os.environ, device=cfg.device.id
            ),
        )


@dataclass
class CycleResult:
    converged: bool
    failed: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    poll_error: str | None = None


@dataclass
class _Timers:
    next_poll: float = 0.0
    next_observe: float = 0.0
    next_retry: float | None = None
    git_backoff: schedule.Backoff = field(default_factory=schedule.Backoff)
    retry_backoff: dict[tuple[str, str], schedule.Backoff] = field(default_factory=dict)
    retry_due: dict[tuple[str, str], float] = field(default_factory=dict)
    capabilities_due: float | None = None  # capabilities not sent yet: try again then
    capabilities_backoff: schedule.Backoff = field(default_factory=schedule.Backoff)


class Agent:
    def __init__(
        self,
        cfg: config.Config,
        *,
        heartbeat: Callable[[], None] = _noop,
        parts: Parts | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = dt.datetime.now,
        rand: Callable[[], float] = random.random,
        kill_at: str | None = None,
        raise_at: str | None = None,
        long_step: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg = cfg
        self._long_step = long_step
        self._should_stop = should_stop
        self._kill_at = kill_at
        self._raise_at = raise_at
        self.parts = parts or Parts.build(cfg)
        self._heartbeat = heartbeat
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._backend: backends.Backend | None = None
        self.records: dict[str, DeploymentRecord] = {}
        self.snapshot: Snapshot | None = None
        self.desired: desired.DesiredState | None = None
        self.applied_commit: str | None = None
        self.timers = _Timers(
            git_backoff=schedule.Backoff(
                cfg.poll.interval, max(cfg.poll.interval, cfg.poll.max_backoff)
            ),
            capabilities_backoff=_retry_backoff(cfg),
        )
        self._tidy_needed = True  # sweep leftovers and prune the cache at the next reconcile

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Recover: clean up after a crash, read every record, load the held commit."""
        store = self.parts.store
        removed = store.remove_leftovers()
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted write", removed)
        self.records = load_records(store)
        agent = store.read_json(AGENT_RECORD) or {}
        self.applied_commit = agent.get("commit")
        held = self.parts.source.held_commit()
        if held:
            try:
                self._load(held)
            except GitError as exc:  # e.g. unsigned: wait for a good commit, keep what runs
                log.error("the held commit %s is not applied: %s", held[:12], exc)
        self.timers.capabilities_due = self._clock()  # with the first report, not before READY

    def stop(self) -> None:
        self.parts.client.close()

    # --- the schedule ----------------------------------------------------------------------

    def tick(self, poll_now: bool = False) -> float:
        """Do whatever is due; return the seconds until something is due again."""
        now = self._clock()
        timers = self.timers
        if poll_now or now >= timers.next_poll:
            self.observe()
            self.reconcile()
        elif timers.next_retry is not None and now >= timers.next_retry:
            if self._in_downtime():  # retries may download: not during a downtime
                timers.next_retry = now + min(self.cfg.poll.interval, 60.0)
            else:
                self.reconcile()
        if self._clock() >= timers.next_observe:
            self.heal()
            timers.next_observe = self._clock() + self.cfg.runtime.observe_interval
        self.report()
        now = self._clock()
        due = [timers.next_poll, timers.next_observe]
        if timers.next_retry is not None:
            due.append(timers.next_retry)
        return max(0.0, min(due) - now)

    def once(self) -> CycleResult:
        """One full cycle: fetch, apply, flush reports. For `margo-lite once`."""
        poll_error = self.observe(force=True)
        self.reconcile()
        self.report(force=True)
        failed = tuple(sorted(i for i, r in self.records.items() if r.state is State.FAILED))
        pending = tuple(sorted(i for i, r in self.records.items() if r.state not in _SETTLED))
        converged = (
            not failed
            and not pending
            and poll_error is None
            and self.desired is not None
            and self.desired.complete
        )
        return CycleResult(
            converged, failed, tuple(p for p in pending if p not in failed), poll_error
        )

    # --- observe ---------------------------------------------------------------------------

    def _in_downtime(self) -> bool:
        return schedule.in_any(self.cfg.poll.downtime, self._wall())

    def observe(self, *, force: bool = False) -> str | None:
        """Poll Git; load the new commit when it changed. Returns the poll error, if any."""
        poll = self.cfg.poll
        timers = self.timers
        if not force and not schedule.polling_allowed(poll.hours, poll.downtime, self._wall()):
            self._schedule_poll()
            self._note_poll("skipped: outside polling hours or in a downtime window")
            return None
        try:
            result = self.parts.source.poll()
        except GitError as exc:
            timers.git_backoff = timers.git_backoff.failed()
            self._schedule_poll()
            (log.debug if self._in_downtime() else log.warning)(
                "polling %s failed (next try in %.0fs): %s",
                logs.sanitize_url(self.cfg.git.url),
                timers.next_poll - self._clock(),
                exc,
            )
            self._note_poll(f"error: {exc}")
            return str(exc)
        timers.git_backoff = timers.git_backoff.succeeded()
        self._schedule_poll()
        if self.snapshot is None or self.snapshot.commit != result.commit:
            log.info("desired state is at commit %s", result.commit[:12])
            try:
                self._load(result.commit)
            except GitError as exc:
                log.error(
                    "commit %s not applied, keeping the last one: %s", result.commit[:12], exc
                )
                self._note_poll(f"error: {exc}")
                return str(exc)
            self._note_poll("changed")
        else:
            self._note_poll("unchanged")
        return None

    def _schedule_poll(self) -> None:
        poll = self.cfg.poll
        now = self._wall()
        due = schedule.next_poll(
            now,
            interval=poll.interval,
            jitter=poll.jitter,
            backoff=self.timers.git_backoff,
            hours=poll.hours,
            downtime=poll.downtime,
            rand=self._rand(),
        )
        wait = _NEVER_WAIT if due is None else max(0.0, (due - now).total_seconds())
        # Wall time may jump (NTP at boot, DST): never sleep past one interval (or backoff)
        # without looking at the clock again.
        limit = max(poll.interval, self.timers.git_backoff.delay()) * (1 + poll.jitter)
        self.timers.next_poll = self._clock() + min(wait, limit)

    def _load(self, commit: str) -> None:
        snapshot = self.parts.source.snapshot(commit)
        try:
            state = desired.parse_files(snapshot.files)
        except MargoLiteError:
            raise
        except Exception as exc:  # the whole commit's boundary: the last one stays in force
            raise GitError(f"its documents cannot be read: {internal_error(exc)}") from None
        for failure in state.failures:
            log.error("desired state: %s", failure.error)
        self.snapshot, self.desired = snapshot, state
        self._tidy_needed = True

    def _note_poll(self, result: str) -> None:
        """Volatile poll status for `margo-lite status`: written to RAM, not to flash."""
        wall = self._wall().astimezone()
        next_at = wall + dt.timedelta(seconds=max(0.0, self.timers.next_poll - self._clock()))
        status = {
            "last_poll": wall.isoformat(timespec="seconds"),
            "last_poll_result": logs.redact(result),
            "next_poll": next_at.isoformat(timespec="seconds"),
            "commit_held": self.snapshot.commit if self.snapshot else None,
        }
        try:
            self.parts.runtime.write_json(POLL_RECORD, status)
        except MargoLiteError as exc:
            log.debug("cannot write the poll status: %s", exc)

    # --- reconcile -------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Carry out the plan from the held desired state; retries are scheduled here."""
        self.timers.next_retry = None
        if self.desired is None or self.snapshot is None:
            return
        try:
            plan = planner.plan(self.desired, self.records)
        except MargoLiteError:
            raise
        except Exception as exc:  # nothing to tell deployments apart yet: what runs stays
            log.error("the desired state cannot be planned: %s", internal_error(exc))
            return
        for dp in plan.deployments:
            if self._should_stop():
                return  # SIGTERM: what is done is recorded; the rest waits for the next start
            self._heartbeat()
            with self._boundary(dp.id):
                if not self._reconcile_one(plan, dp):
                    return
        if plan.changes or self._tidy_needed:
            # Only after a change or a start: an idle cycle costs no engine call, no write.
            swept = self._remove_orphans(plan.desired_ids) if self.desired.complete else True
            self._prune_packages()
            self._tidy_needed = not swept
        if (
            self.snapshot.commit != self.applied_commit
            and self.desired.complete
            and all(r.state in _SETTLED for r in self.records.values())
        ):
            self.applied_commit = self.snapshot.commit
            self.parts.store.write_json(AGENT_RECORD, {"commit": self.applied_commit})

    def _reconcile_one(self, plan: planner.Plan, dp: planner.DeploymentPlan) -> bool:
        """Carry out one deployment's plan; False when a stop was asked for meanwhile."""
        blockers = plan.blocked_by(dp, self.records)
        record = planner.planned_record(dp, self.records.get(dp.id), blockers=blockers)
        if record is None:
            return True
        if dp.failure is not None or dp.held or blockers or not dp.changes:
            record = self._save(record)
        else:
            # The planned record stays in memory: the first step's change is the news.
            for step in dp.changes:
                if self._should_stop():
                    return False
                record, ran = self._run_step(record, step)
                if (
                    ran
                    and record.component(step.component) is not None
                    and (record.component(step.component).state is State.FAILED)
                ):
                    break  # later components wait for this one (listed order)
        if record.state is State.REMOVED:
            self._forget(record)
        return True

    @contextlib.contextmanager
    def _boundary(self, deployment_id: str) -> Iterator[None]:
        """The per-deployment error boundary: nothing in one deployment's documents stops
        the others. A step's own failures are handled in the step (`_run_step`, `_heal_one`);
        what escapes here is a surprise outside a step (planning its record, building its
        report): the deployment is Failed with INTERNAL_ERROR and the loop goes on. Errors
        of the device itself (a full disk, a corrupt record) still go up to the loop."""
        try:
            yield
        except MargoLiteError:
            raise
        except Exception as exc:
            error = internal_error(exc)
            log.error("deployment %s failed: %s", deployment_id, error)
            old = self.records.get(deployment_id) or DeploymentRecord(deployment_id, State.PENDING)
            failed = dataclasses.replace(old, state=State.FAILED, error=Reason.of(error))
            try:
                self._save(failed)
            except MargoLiteError:
                raise
            except Exception as again:  # even its report cannot be built: the log says it
                log.error(
                    "deployment %s: its failure cannot be recorded: %s",
                    deployment_id,
                    internal_error(again),
                )

    def _run_step(self, record: DeploymentRecord, step: Step) -> tuple[DeploymentRecord, bool]:
        """Run one step; (the record after it, whether it ran). A retry not yet due is
        skipped, so other components of the deployment still get their changes."""
        key = (step.deployment_id, step.component)
        if step.retry and self._clock() < self.timers.retry_due.get(key, 0.0):
            self._schedule_retry(self.timers.retry_due[key])
            return record, False
        self._heartbeat()
        touched = False  # whether what runs may have changed when an error comes
        try:
            if step.action is Action.REMOVE:
                record = self._save(planner.started(record, step))
                self.report()
                self._checkpoint("before-remove")
                touched = True
                with self._long_step():
                    self.backend.remove(step.deployment_id, step.component)
                self._checkpoint("after-remove")
                done = planner.succeeded(record, step)
            else:
                assert step.desired is not None
                current = record.component(step.component)
                if current is None or current.state is State.PENDING:
                    record = self._save(planner.waiting(record, step, POLICY_CHECK))
                with self._long_step():
                    unit, package = self._prepare(step)
                record = self._save(planner.started(record, step))
                self.report()
                self._checkpoint("before-apply")
                touched = True
                self._raise_if_asked("apply", step.deployment_id)
                with self._long_step():
                    self.backend.apply(unit)
                self._checkpoint("after-apply")
                done = planner.succeeded(record, step, {PACKAGE_FACT: package})
        except Exception as exc:  # the step's boundary: any surprise is this step's failure
            # An update that failed before touching anything, or that the backend rolled
            # back, leaves the previous version running.
            error = _coded(exc)
            restored = step.action is Action.UPDATE and (not touched or error.code == "ROLLED_BACK")
            log.error(
                "%s %s/%s failed: %s", step.action.value, step.deployment_id, step.component, error
            )
            self._retry_later(key)
            failed = planner.failed(record, step, Reason.of(error), restored=restored)
            return self._save(failed), True
        self.timers.retry_backoff.pop(key, None)
        self.timers.retry_due.pop(key, None)
        log.info("%s %s/%s done", step.action.value, step.deployment_id, step.component)
        return self._save(done), True

    def _checkpoint(self, name: str) -> None:
        """Crash tests: SIGKILL this process at a named point (see KILL_AT_ENV)."""
        if self._kill_at == name:
            log.warning("test hook: killing the agent at %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def _raise_if_asked(self, point: str, deployment_id: str) -> None:
        """Robustness tests: an unexpected exception at a named point (see RAISE_AT_ENV)."""
        if self._raise_at == f"{point}:{deployment_id}":
            raise RuntimeError(f"test hook: raised at {point} of {deployment_id}")

    def _retry_later(self, key: tuple[str, str]) -> None:
        """A failed component is tried again with backoff: 10 s, doubling, up to
        poll.max_backoff. Transient or not, the cause may go away (an image loaded by hand,
        a port freed); a new commit tries at once."""
        backoff = self.timers.retry_backoff.get(key, _retry_backoff(self.cfg)).failed()
        self.timers.retry_backoff[key] = backoff
        due = self._clock() + schedule.jittered(backoff.delay(), 0.2, self._rand())
        self.timers.retry_due[key] = due
        self._schedule_retry(due)

    def _schedule_retry(self, due: float) -> None:
        current = self.timers.next_retry
        self.timers.next_retry = due if current is None else min(current, due)

    def _prepare(self, step: Step) -> tuple[backends.ComponentUnit, str]:
        """The component's canonical document, built once and checked by the policy gate:
        the very object the backend runs and records."""
        component = step.desired
        assert component is not None and self.snapshot is not None
        self._raise_if_asked("prepare", step.deployment_id)
        if not component.package_location:
            raise EngineError(
                f"component {component.name} has no packageLocation", code="PACKAGE_INVALID"
            )
        package = self.parts.packages.prepare(
            component.package_location, component.key_location, self.snapshot.files
        )
        return self._checked_unit(step.deployment_id, component, package.path), package.digest

    def _checked_unit(
        self, deployment_id: str, component: desired.Component, package_dir: Path
    ) -> backends.ComponentUnit:
        """The component's canonical document from its package folder, through the policy."""
        unit = backends.ComponentUnit.from_package(
            deployment_id,
            component.name,
            package_dir,
            component.env,
            component.overlays,
            component.digest,
            device=self.cfg.device.id,
        )
        policy.check_compose(unit.document, self.cfg.policy, package_dir=package_dir)
        return unit

    @property
    def backend(self) -> backends.Backend:
        if self._backend is None:
            self._backend = self.parts.backend_factory()
        return self._backend

    def _remove_orphans(self, desired_ids: frozenset[str]) -> bool:
        """Remove labelled containers no record or desired deployment accounts for.

        Returns whether the engine could be asked (if not, the sweep is tried again)."""
        try:
            managed = self.backend.managed()
        except MargoLiteError as exc:
            log.warning("cannot list managed containers: %s", exc)
            return False
        known = {(r.id, c.name) for r in self.records.values() for c in r.components}
        for deployment_id, component in sorted(managed - known):
            if deployment_id in desired_ids and deployment_id not in self.records:
                continue
            log.warning(
                "removing leftover %s/%s that no record accounts for", deployment_id, component
            )
            try:
                with self._long_step():
                    self.backend.remove(deployment_id, component)
            except MargoLiteError as exc:
                log.error("cannot remove leftover %s/%s: %s", deployment_id, component, exc)
        return True

    def _prune_packages(self) -> None:
        keep = {
            c.data.get(PACKAGE_FACT)
            for r in self.records.values()
            for c in r.components
            if c.data.get(PACKAGE_FACT)
        }
        try:
            self.parts.packages.prune(keep)
        except MargoLiteError as exc:
            log.warning("cannot prune the package cache: %s", exc)

    # --- heal ------------------------------------------------------------------------------

    def heal(self) -> None:
        """Restore Installed components whose containers stopped, exited or vanished.

        A first restoration that succeeds is not reported; one that fails makes the component
        Failed (reported) and is retried with backoff; success reports Installed again.
        """
        if self.desired is None:
            return
        wanted = {d.id: d for d in self.desired.deployments}
        for record in list(self.records.values()):
            deployment = wanted.get(record.id)
            if deployment is None:
                continue
            with self._boundary(record.id):
                for component in deployment.components:
                    current = record.component(component.name)
                    if (
                        current is not None
                        and current.state is State.INSTALLED
                        and current.digest == component.digest
                    ):
                        record = self._heal_one(record, component)

    def _heal_one(self, record: DeploymentRecord, component: desired.Component) -> DeploymentRecord:
        self._heartbeat()
        step = Step(
            record.id, component.name, Action.UPDATE, component, record.component(component.name)
        )
        problems = ""
        try:
            self._raise_if_asked("heal", record.id)
            try:
                health = self.backend.observe(record.id, component.name)
            except MargoLiteError as exc:
                log.warning("cannot observe %s/%s: %s", record.id, component.name, exc)
                return record
            if health.ok:
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
                raise EngineError(
                    "no package is recorded for this component", code="PACKAGE_MISSING"
                )
            package = self.parts.packages.verify(digest)
            unit = self.backend.recorded(record.id, component.name)
            if unit is None:  # recorded by an older version: built from the verified package
                unit = self._checked_unit(record.id, component, package.path)
            else:  # checked again against the policy in force
                policy.check_compose(unit.document, self.cfg.policy, package_dir=package.path)
            with self._long_step():
                self.backend.apply(unit)
        except Exception as exc:  # the heal step's boundary: any surprise fails this component
            # Reported now; the reconcile retries it with backoff and reports Installed.
            error = _coded(exc)
            log.error("%s/%s could not be restored: %s", record.id, component.name, error)
            self._retry_later((record.id, component.name))
            # A package changed under it, a policy that now refuses it, or a surprise is that
            # code; anything else is the container that is down.
            code = error.code if error.code in _HEAL_REFUSALS else "CONTAINER_DOWN"
            reason = (
                Reason.of(error)
                if code == "INTERNAL_ERROR"
                else Reason(code, f"{problems}; restoring failed: {error}")
            )
            return self._save(planner.failed(record, step, reason, restored=False))
        log.info("%s/%s restored", record.id, component.name)
        return self._save(planner.succeeded(record, step, {PACKAGE_FACT: package.digest}))

    # --- report ----------------------------------------------------------------------------

    def report(self, *, force: bool = False) -> None:
        """Hand queued reports to the WOS; nothing is sent during a downtime.

        `force` (for `once`) ignores the outbox's backoff and keeps flushing, in bounded
        rounds, until everything is delivered or the WOS stops answering.
        """
        if self._in_downtime() and not force:
            return
        due = self.timers.capabilities_due
        if due is not None and self._clock() >= due:
            self._send_capabilities()
        outbox = self.parts.outbox
        for _ in range(_FORCED_FLUSH_ROUNDS if force else 1):
            if not len(outbox):
                return
            try:
                result = outbox.flush(
                    self.parts.client,
                    quiet=self._in_downtime(),
                    **({"now": float("inf")} if force else {}),
                )
            except WosError as exc:  # flush handles its own errors; this is a last guard
                log.warning("reports not delivered: %s", exc)
                return
            if result.error is not None or not result.delivered:
                return

    def _send_capabilities(self) -> None:
        """Send the capabilities if they changed. A gateway often starts before its network
        or its WOS: after a failure (or in a downtime) `report()` tries again, with backoff."""
        timers = self.timers
        if self._in_downtime():
            timers.capabilities_due = self._clock()
            return
        from margo_lite import capabilities

        try:
            body = capabilities.discover_for(self.cfg)
            self.parts.client.send_capabilities(body)
        except MargoLiteError as exc:
            timers.capabilities_backoff = timers.capabilities_backoff.failed()
            wait = schedule.jittered(timers.capabilities_backoff.delay(), 0.2, self._rand())
            timers.capabilities_due = self._clock() + wait
            log.warning("capabilities not sent (next try in %.0fs): %s", wait, exc)
            return
        timers.capabilities_due = None
        timers.capabilities_backoff = timers.capabilities_backoff.succeeded()

    # --- records ---------------------------------------------------------------------------

    def _save(self, new: DeploymentRecord) -> DeploymentRecord:
        """Queue the status event the WOS must hear (if any), then persist the record.

        The event goes first: after a crash between the two the WOS may hear a state
        twice, but it never misses one that the record holds.
        """
        old = self.records.get(new.id)
        if old is not None and new == dataclasses.replace(old, last_change=new.last_change):
            return old
        event = planner.status_event(old, new)
        if event is not None:
            stamp = self._wall().astimezone().isoformat(timespec="seconds")
            new = dataclasses.replace(new, last_change=stamp)
            body = wos.status_body(
                event.deployment_id,
                event.state.value,
                (event.error.code, event.error.message) if event.error else None,
                [(name, state.value) for name, state in event.components],
                self.cfg.wos.status_case,
            )
            self.parts.outbox.add(event.deployment_id, body)
            log.info(
                "deployment %s is %s%s",
                new.id,
                new.state.value,
                f" ({new.error.code}: {new.error.message})" if new.error else "",
            )
        self.parts.store.write_json(f"{DEPLOYMENTS}/{new.id}.json", new.to_json())
        self.records[new.id] = new
        return new

    def _forget(self, record: DeploymentRecord) -> None:
        self.parts.store.delete(f"{DEPLOYMENTS}/{record.id}.json")
        self.records.pop(record.id, None)


_SETTLED = (State.INSTALLED, State.REMOVED)
_HEAL_REFUSALS = ("PACKAGE_TAMPERED", "POLICY_DENIED", "COMPOSE_INVALID", "INTERNAL_ERROR")


def _coded(exc: Exception) -> MargoLiteError:
    """Any exception from a step as a coded error for its report: an OSError (a full or
    read-only disk) is LOCAL_IO_ERROR, anything unexpected INTERNAL_ERROR."""
    if isinstance(exc, MargoLiteError):
        return exc
    if isinstance(exc, OSError):
        return EngineError(f"{exc.strerror or exc}", code="LOCAL_IO_ERROR")
    return internal_error(exc)


def internal_error(exc: Exception) -> MargoLiteError:
    """An exception no code was written for, as INTERNAL_ERROR: its class and message for
    the report (secrets masked), the traceback in the log at debug level only."""
    log.debug("unexpected %s", type(exc).__name__, exc_info=exc)
    text = logs.redact(str(exc))
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return MargoLiteError(f"unexpected error: {message[:400]}", code="INTERNAL_ERROR")


_FORCED_FLUSH_ROUNDS = 100  # `once`: at most this many flushes (each sends up to 50 reports)
_NEVER_WAIT = 3600.0  # polling is never allowed (hours all inside downtime): look again later


def _retry_backoff(cfg: config.Config) -> schedule.Backoff:
    """Retries of a failed component: 10 s after the first failure, doubling, capped."""
    return schedule.Backoff(5.0, max(5.0, cfg.poll.max_backoff))


def load_records(store: StateStore) -> dict[str, DeploymentRecord]:
    """Every deployment record; a corrupt one raises (never read as 'absent')."""
    records = {}
    for name in store.names(DEPLOYMENTS):
        value = store.read_json(name)
        if value is not None:
            record = DeploymentRecord.from_json(value)
            records[record.id] = record
    return records
