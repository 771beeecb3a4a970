"""The observe step: poll the desired-state source and load a new revision.

`observe` polls within the polling hours and outside downtime windows, backing off after
a failure (`poll.interval` doubled per failure up to `poll.max_backoff`, jittered); any
`SourceError` leaves the last loaded revision in force. When the source's revision
changed, `load` reads its files (`DesiredSource.snapshot`) and parses them into a
`DesiredState`; a revision that cannot be read or parsed is refused whole and the previous
one stays. Each poll writes its outcome to the volatile poll record for `margo-lite status`.
"""

from __future__ import annotations

import datetime as dt

from margo_lite import desired, logs, schedule
from margo_lite.cycle import Context, internal_error
from margo_lite.errors import MargoLiteError, SourceError
from margo_lite.records import POLL_RECORD

log = logs.get(__name__)

_NEVER_WAIT = 3600.0  # polling is never allowed (hours all inside downtime): look again later


def observe(ctx: Context, *, force: bool = False) -> str | None:
    """Poll the source; load the new revision when it changed. Returns the poll error."""
    poll = ctx.cfg.poll
    timers = ctx.timers
    if not force and not schedule.polling_allowed(poll.hours, poll.downtime, ctx.wall()):
        _schedule(ctx)
        _note(ctx, "skipped: outside polling hours or in a downtime window")
        return None
    try:
        result = ctx.parts.source.poll()
    except SourceError as exc:
        timers.poll_backoff = timers.poll_backoff.failed()
        _schedule(ctx)
        (log.debug if ctx.in_downtime() else log.warning)(
            "polling %s failed (next try in %.0fs): %s",
            logs.sanitize_url(ctx.cfg.desired_url),
            timers.next_poll - ctx.clock(),
            exc,
        )
        _note(ctx, f"error: {exc}")
        return str(exc)
    timers.poll_backoff = timers.poll_backoff.succeeded()
    _schedule(ctx)
    if ctx.snapshot is not None and ctx.snapshot.revision == result.revision:
        _note(ctx, "unchanged")
        return None
    log.info("desired state is at revision %s", result.revision[:12])
    try:
        load(ctx, result.revision)
    except SourceError as exc:
        log.error("revision %s not applied, keeping the last one: %s", result.revision[:12], exc)
        _note(ctx, f"error: {exc}")
        return str(exc)
    _note(ctx, "changed")
    return None


def load(ctx: Context, revision: str) -> None:
    """Read and parse a held revision; it replaces the loaded one only once it parsed."""
    snapshot = ctx.parts.source.snapshot(revision)
    try:
        state = desired.parse_files(snapshot.files, device_id=ctx.cfg.device.id)
    except MargoLiteError:
        raise
    except Exception as exc:  # the whole revision's boundary: the last one stays in force
        raise SourceError(
            f"its documents cannot be read: {internal_error(exc)}", code="INTERNAL_ERROR"
        ) from None
    for failure in state.failures:
        log.error("desired state: %s", failure.error)
    ctx.snapshot, ctx.desired = snapshot, state
    ctx.tidy_needed = True


def _schedule(ctx: Context) -> None:
    poll = ctx.cfg.poll
    now = ctx.wall()
    due = schedule.next_poll(
        now,
        interval=poll.interval,
        jitter=poll.jitter,
        backoff=ctx.timers.poll_backoff,
        hours=poll.hours,
        downtime=poll.downtime,
        rand=ctx.rand(),
    )
    wait = _NEVER_WAIT if due is None else max(0.0, (due - now).total_seconds())
    # Wall time may jump (NTP at boot, DST): never sleep past one interval (or backoff)
    # without looking at the clock again.
    limit = max(poll.interval, ctx.timers.poll_backoff.delay()) * (1 + poll.jitter)
    ctx.timers.next_poll = ctx.clock() + min(wait, limit)


def _note(ctx: Context, result: str) -> None:
    """Volatile poll status for `margo-lite status`: written to RAM, not to flash."""
    wall = ctx.wall().astimezone()
    next_at = wall + dt.timedelta(seconds=max(0.0, ctx.timers.next_poll - ctx.clock()))
    status = {
        "last_poll": wall.isoformat(timespec="seconds"),
        "last_poll_result": logs.redact(result),
        "next_poll": next_at.isoformat(timespec="seconds"),
        "revision_held": ctx.snapshot.revision if ctx.snapshot else None,
    }
    try:
        ctx.parts.runtime.write_json(POLL_RECORD, status)
    except MargoLiteError as exc:
        log.debug("cannot write the poll status: %s", exc)
