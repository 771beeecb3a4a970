"""The report step: hand queued status reports and the device's capabilities to the WOS.

Reports were queued in the durable outbox when their records were saved
(`records.RecordBook.save`); `report` flushes the outbox (which keeps its own backoff and
per-deployment order) and, when due, sends the capabilities. A gateway often starts before
its network or its WOS: capabilities that could not be sent are tried again with backoff.
Nothing is sent during a downtime window unless `once` forces it.
"""

from __future__ import annotations

from margo_lite import capabilities, logs, schedule
from margo_lite.cycle import Context
from margo_lite.errors import MargoLiteError, WosError

log = logs.get(__name__)

_FORCED_FLUSH_ROUNDS = 100  # `once`: at most this many flushes (each sends up to 50 reports)


def report(ctx: Context, *, force: bool = False) -> None:
    """Hand queued reports to the WOS; nothing is sent during a downtime.

    `force` (for `once`) ignores the outbox's backoff and keeps flushing, in bounded
    rounds, until everything is delivered or the WOS stops answering.
    """
    if ctx.in_downtime() and not force:
        return
    due = ctx.timers.capabilities_due
    if due is not None and ctx.clock() >= due:
        send_capabilities(ctx)
    outbox = ctx.parts.outbox
    for _ in range(_FORCED_FLUSH_ROUNDS if force else 1):
        if not len(outbox):
            return
        try:
            result = outbox.flush(
                ctx.parts.client,
                quiet=ctx.in_downtime(),
                **({"now": float("inf")} if force else {}),
            )
        except WosError as exc:  # flush handles its own errors; this is a last guard
            log.warning("reports not delivered: %s", exc)
            return
        if result.error is not None or not result.delivered:
            return


def send_capabilities(ctx: Context) -> None:
    """Send the capabilities; after a failure (or in a downtime) `report` tries again."""
    timers = ctx.timers
    if ctx.in_downtime():
        timers.capabilities_due = ctx.clock()
        return
    try:
        body = capabilities.discover_for(ctx.cfg)
        ctx.parts.client.send_capabilities(body)
    except MargoLiteError as exc:
        timers.capabilities_backoff = timers.capabilities_backoff.failed()
        wait = schedule.jittered(timers.capabilities_backoff.delay(), 0.2, ctx.rand())
        timers.capabilities_due = ctx.clock() + wait
        log.warning("capabilities not sent (next try in %.0fs): %s", wait, exc)
        return
    timers.capabilities_due = None
    timers.capabilities_backoff = timers.capabilities_backoff.succeeded()
