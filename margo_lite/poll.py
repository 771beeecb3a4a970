"""The observe step: poll the desired-state source and load a new revision.

`observe` polls within the polling hours and outside downtime windows, backing off after a
failure (transient: `poll.interval` doubled per failure up to `poll.max_backoff`; stalled:
`poll.max_backoff` at once; jittered); any `SourceError` leaves the last loaded revision in
force. When the source's revision changed, `load` reads its files (`DesiredSource.snapshot`)
and parses them into a `DesiredState`; a revision that cannot be read or parsed is refused
whole and the previous one stays (a revision refused for a stalled cause is not read again).
Each poll writes its outcome to the volatile poll record for `margo-lite status`.
"""

from __future__ import annotations

import datetime as dt

from margo_lite import logs, schedule, valueclass
from margo_lite.cycle import Context, internal_error
from margo_lite.errors import MargoLiteError, RevisionError, SourceError, StalledError, family
from margo_lite.records import POLL_RECORD

log = logs.get(__name__)

_NEVER_WAIT = 3600.0  # polling is never allowed (hours all inside downtime): look again later
_STALLED = 64  # failures after which `Backoff.delay()` is at its cap whatever the base


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
        timers.poll_backoff = _after_failure(timers.poll_backoff, exc)
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
    if held(ctx) == result.revision:
        _note(ctx, "unchanged")
        return None
    if ctx.refused is not None and ctx.refused[0] == result.revision:
        _note(ctx, f"error: {ctx.refused[1]}")  # stalled: not read again
        return ctx.refused[1]
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
    """Read and parse a held revision; it replaces the loaded one only once it parsed. A
    revision refused for a stalled cause (a bad signature) is remembered, not read again."""
    from margo_lite import desired  # the parser: only when a revision is read

    try:
        snapshot = ctx.parts.source.snapshot(revision)
        try:
            state = desired.parse_files(
                snapshot.files, device_id=ctx.cfg.device.id, file_ids=snapshot.file_ids
            )
        except MargoLiteError:
            raise
        except Exception as exc:  # the whole revision's boundary: the last one stays in force
            raise RevisionError(f"its documents cannot be read: {internal_error(exc)}") from None
    except SourceError as exc:
        if family(exc) is StalledError:
            ctx.refused = (revision, str(exc))
        raise
    for failure in state.failures:
        log.error("desired state: %s", failure.error)
    ctx.snapshot, ctx.desired, ctx.deferred = snapshot, state, None
    ctx.book.revision = snapshot.revision  # what the reports from now on are about
    ctx.tidy_needed = True


def held(ctx: Context) -> str | None:
    """The revision in force: the loaded one, or the one the idle mark left unread."""
    return ctx.snapshot.revision if ctx.snapshot is not None else ctx.deferred


def _after_failure(backoff: schedule.Backoff, exc: SourceError) -> schedule.Backoff:
    """Transient: the wait doubles. Stalled (credentials, URL, branch): the longest wait at
    once; only a change on the server's side or in the configuration (a reload polls at
    once) can fix it, and polling is how a fix arrives."""
    if family(exc) is StalledError:
        return valueclass.replace(backoff, failures=max(backoff.failures + 1, _STALLED))
    return backoff.failed()


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
        "revision_held": held(ctx),
    }
    try:
        ctx.parts.runtime.write_json(POLL_RECORD, status)
    except MargoLiteError as exc:
        log.debug("cannot write the poll status: %s", exc)
