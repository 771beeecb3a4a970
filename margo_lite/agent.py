"""The reconciler: observe the desired state, act on the difference, heal, report.

One `Agent` per device; its loop (`tick`) runs whichever step is due, each in its own
module with one job: `poll.observe` polls the desired-state source and loads a new
revision; `act.reconcile` plans against the records and carries out the plan through the
package store, the policy gate and the backend; `heal.heal` restores Installed components
that stopped; `report.report` hands queued status reports to the WOS. The steps share a
`cycle.Context`; the records and their crash-ordering rule are in `records`.

Every state change is queued in the durable outbox *before* the record that holds it is
written, so after a crash at any instant the WOS may hear a state twice but never misses
the last one; a record left Installing or Removing is redone on the next start (applying
and removing are idempotent in the backend). The agent never removes anything because of
something it could not read: a corrupt record stops it, an incomplete desired state holds
removals, and an unreachable source leaves the last applied state in force.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable

from margo_lite import config, idlemark, logs, poll, report, schedule
from margo_lite.cycle import Context, Hooks, Parts, Timers, retry_backoff
from margo_lite.errors import SourceError
from margo_lite.records import (
    AGENT_RECORD,
    AGENT_REVISION_KEY,
    SETTLED,
    DeploymentRecord,
    RecordBook,
    State,
)
from margo_lite.source import Snapshot
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:  # the act and heal steps load what they need when there is a plan
    from margo_lite import backends, desired

log = logs.get(__name__)

#: Test hook (documented in DEVELOPERS.md): the agent SIGKILLs itself at the named point,
#: one of before-apply, after-apply, before-remove, after-remove.
KILL_AT_ENV = "MARGO_LITE_TEST_KILL_AT"
#: Test hook (documented in DEVELOPERS.md): `<point>:<deployment id>` raises an unexpected
#: exception (RuntimeError) at prepare, apply or heal of that deployment, every time.
RAISE_AT_ENV = "MARGO_LITE_TEST_RAISE_AT"

_REPORT_WAKE = 0.1  # s: the soonest the loop comes back for reports or capabilities


@dataclass
class CycleResult:
    converged: bool
    failed: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    poll_error: str | None = None


def _noop() -> None:
    pass


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
        self.parts = parts or Parts.build(cfg)
        poll_cfg = cfg.poll
        book = RecordBook(self.parts, status_case=cfg.wos.status_case, wall=wall)
        self.ctx = Context(
            cfg,
            self.parts,
            book,
            clock,
            wall,
            rand,
            heartbeat=heartbeat,
            long_step=long_step,
            should_stop=should_stop,
            hooks=Hooks(kill_at, raise_at),
            timers=Timers(
                poll_backoff=schedule.Backoff(
                    poll_cfg.interval, max(poll_cfg.interval, poll_cfg.max_backoff)
                ),
                capabilities_backoff=retry_backoff(poll_cfg.max_backoff),
            ),
        )

    def start(self) -> None:
        """Recover: clean up after a crash, read every record, load the held revision
        (or defer reading it while the idle mark says nothing is to do: `idlemark`)."""
        ctx = self.ctx
        removed = self.parts.store.remove_leftovers()
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted write", removed)
        ctx.book.load()
        ctx.applied_revision = (self.parts.store.read_json(AGENT_RECORD) or {}).get(
            AGENT_REVISION_KEY
        )
        held = self.parts.source.held_revision()
        if held and idlemark.resume(ctx, held):
            log.info("revision %s is applied and nothing is to do", held[:12])
        elif held:
            try:
                poll.load(ctx, held)
            except SourceError as exc:  # e.g. unsigned: wait for a good one, keep what runs
                log.error("the held revision %s is not applied: %s", held[:12], exc)
        ctx.timers.capabilities_due = ctx.clock()  # with the first report, not before READY

    def stop(self) -> None:
        self.parts.client.close()
        self.parts.source.close()

    def tick(self, poll_now: bool = False) -> float:
        """Do whatever is due; return the seconds until something is due again."""
        ctx, timers = self.ctx, self.ctx.timers
        now = ctx.clock()
        polled = poll_now or now >= timers.next_poll
        if polled:
            self.observe()
        if polled or (timers.next_retry is not None and now >= timers.next_retry):
            if not ctx.in_downtime():
                self.reconcile()
            elif timers.next_retry is not None:  # a retry may download: after the downtime
                timers.next_retry = max(timers.next_retry, now + min(self.cfg.poll.interval, 60.0))
        if ctx.clock() >= timers.next_heal:
            self.heal()
            timers.next_heal = ctx.clock() + self.cfg.runtime.observe_interval
        self.report()
        due = [timers.next_poll, timers.next_heal, timers.next_retry]
        if not ctx.in_downtime():  # a downtime holds reports: its end is a poll's time
            soonest = ctx.clock() + _REPORT_WAKE  # a report that keeps failing cannot spin
            for wake in (timers.capabilities_due, self.parts.outbox.next_attempt()):
                due.append(None if wake is None else max(wake, soonest))
        return max(0.0, min(d for d in due if d is not None) - ctx.clock())

    def once(self) -> CycleResult:
        """One full cycle: fetch, apply, flush reports. For `margo-lite once`."""
        poll_error = self.observe(force=True)
        idlemark.ensure_loaded(self.ctx)  # what `complete` below is read from
        self.reconcile()
        self.report(force=True)
        records = self.records.values()
        failed = tuple(sorted(r.id for r in records if r.state is State.FAILED))
        pending = tuple(sorted(r.id for r in records if r.state not in SETTLED))
        complete = self.desired is not None and self.desired.complete
        converged = not failed and not pending and poll_error is None and complete
        return CycleResult(
            converged, failed, tuple(p for p in pending if p not in failed), poll_error
        )

    # --- the steps -------------------------------------------------------------------------

    def observe(self, *, force: bool = False) -> str | None:
        """Poll the desired-state source; load a new revision. Returns the poll error."""
        return poll.observe(self.ctx, force=force)

    def reconcile(self) -> None:
        """Carry out the plan from the loaded desired state."""
        if idlemark.reconcile_idle(self.ctx):
            return
        from margo_lite import act

        act.reconcile(self.ctx, self.report)

    def heal(self) -> None:
        """Restore Installed components whose containers stopped, exited or vanished."""
        if idlemark.heal_idle(self.ctx):
            return
        from margo_lite import heal

        heal.heal(self.ctx)

    def report(self, *, force: bool = False) -> None:
        """Hand queued reports (and capabilities, when due) to the WOS."""
        report.report(self.ctx, force=force)

    # --- what tests, the status and the port check read ------------------------------------

    @property
    def records(self) -> dict[str, DeploymentRecord]:
        return self.ctx.book.by_id

    @property
    def snapshot(self) -> Snapshot | None:
        return self.ctx.snapshot

    @property
    def desired(self) -> desired.DesiredState | None:
        return self.ctx.desired

    @property
    def backend(self) -> backends.Backend:
        return self.ctx.backend
