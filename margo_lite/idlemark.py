"""The idle mark: a restarted agent with nothing to do reaches its idle loop unread.

When a reconcile of the applied revision had nothing to do (no change, the sweep done,
every record settled, the desired state complete), `act.reconcile` keeps an idle mark in
the state store (`record`, written only when it changes): the revision, digests of the
configuration and of the records, and what the start's sweep needs. A restarted agent
whose held revision, configuration and records match it defers reading the revision
(`resume`: `Context.deferred`): the plan is a function of those three, so it would have
nothing to do either. The revision is read (`ensure_loaded`) the first time a step needs
it, always before any action: a record that moved, a component whose health check fails
(`heal_idle`), `margo-lite once`, a poll that brings another revision. When in doubt (no
mark, a mark that cannot be read or does not match) the revision is read at start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from margo_lite import __version__, logs, poll
from margo_lite.cycle import Context
from margo_lite.errors import MargoLiteError, SourceError
from margo_lite.records import State

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

IDLE_MARK = "idle.json"  # in the state store


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected(ctx: Context, revision: str) -> dict[str, Any]:
    """What a mark must hold to stand for `revision` with this configuration, these records
    and this margo-lite (the repr of the frozen configuration covers every option)."""
    records = [r.to_json() for _, r in sorted(ctx.book.by_id.items())]
    return {
        "version": __version__,  # another margo-lite may plan (or digest) otherwise
        "revision": revision,
        "config": _sha256(repr(ctx.cfg)),
        "records": _sha256(json.dumps(records, sort_keys=True)),
    }


def record(ctx: Context, revision: str, desired_ids: Iterable[str]) -> None:
    """Keep the mark of a reconcile that had nothing to do; no write when it is unchanged.
    A mark that cannot be written only costs the next start a read of the revision."""
    mark = {**expected(ctx, revision), "desired_ids": sorted(desired_ids)}
    if mark == ctx.idle_mark:
        return
    try:
        ctx.parts.store.write_json(IDLE_MARK, mark)
    except MargoLiteError as exc:
        log.warning("cannot keep the idle mark: %s", exc)
        return
    ctx.idle_mark = mark


def resume(ctx: Context, held: str) -> bool:
    """At start: whether the held revision can stay unread (the mark matches it, the
    configuration and the records, and it is the applied one). Sets `Context.deferred`."""
    try:
        mark = ctx.parts.store.read_json(IDLE_MARK)
    except MargoLiteError as exc:
        log.warning("the idle mark is not used: %s", exc)
        return False
    if not isinstance(mark, dict):
        return False
    ctx.idle_mark = mark
    ids = mark.get("desired_ids")
    if (
        held != ctx.applied_revision
        or not isinstance(ids, list)
        or not all(isinstance(i, str) for i in ids)
        or any(mark.get(k) != v for k, v in expected(ctx, held).items())
    ):
        return False
    ctx.deferred = held
    ctx.deferred_generation = ctx.book.generation
    ctx.book.revision = held  # what reports are about, as if it were loaded
    return True


def ensure_loaded(ctx: Context) -> None:
    """Read the deferred revision now: a step needs the desired state."""
    if ctx.desired is not None or ctx.deferred is None:
        return
    revision, ctx.deferred = ctx.deferred, None
    log.info("reading the held revision %s", revision[:12])
    try:
        poll.load(ctx, revision)
    except SourceError as exc:  # as at start: wait for a good one, keep what runs
        log.error("the held revision %s is not applied: %s", revision[:12], exc)


def _still_idle(ctx: Context) -> bool:
    """Whether the deferred revision may stay unread: no record moved since the start."""
    if ctx.desired is not None or ctx.deferred is None:
        return False
    if ctx.book.generation != ctx.deferred_generation:
        ensure_loaded(ctx)
        return False
    return True


def reconcile_idle(ctx: Context) -> bool:
    """The reconcile of a deferred revision: nothing to plan; the start's sweep, from the
    mark. False when the reconcile must run on the revision (read by then)."""
    if not _still_idle(ctx):
        return False
    ctx.timers.next_retry = None
    if ctx.tidy_needed:  # the sweep; not the cache: the mark was kept after its pruning,
        # and with the same revision and records nothing could have been added to it
        from margo_lite import tidy

        ids = (ctx.idle_mark or {}).get("desired_ids", [])
        ctx.tidy_needed = not tidy.remove_orphans(ctx, frozenset(ids))
    return True


def heal_idle(ctx: Context) -> bool:
    """The health check of a deferred revision: every Installed component of the records
    (the mark says each is at its desired digest). False when one must be restored: the
    heal step runs on the revision (read by then)."""
    if not _still_idle(ctx):
        return False
    for record in list(ctx.book.by_id.values()):
        for component in record.components:
            if component.state is not State.INSTALLED:
                continue
            ctx.heartbeat()
            try:
                health = ctx.backend.health(record.id, component.name)
            except MargoLiteError as exc:
                log.warning("cannot observe %s/%s: %s", record.id, component.name, exc)
                continue
            if not health.ok and not health.settling:
                ensure_loaded(ctx)
                return False
    return True
