"""The sweep after a change or a start: leftovers no record accounts for, unused packages.

`act.reconcile` runs it after a cycle that changed something and at the first reconcile
after a start; `idlemark` runs the start's sweep from the idle mark when the revision is
not read. It needs the records, the desired deployment ids and the engine, not the plan.
"""

from __future__ import annotations

from margo_lite import logs
from margo_lite.constants import PACKAGE_CACHE
from margo_lite.cycle import Context
from margo_lite.errors import MargoLiteError

log = logs.get(__name__)

PACKAGE_FACT = "package"  # ComponentRecord.data key: digest of the package in use


def remove_orphans(ctx: Context, desired_ids: frozenset[str]) -> bool:
    """Remove labelled containers no record or desired deployment accounts for.

    Returns whether the engine could be asked (if not, the sweep is tried again)."""
    try:
        managed = ctx.backend.managed()
    except MargoLiteError as exc:
        log.warning("cannot list managed containers: %s", exc)
        return False
    records = ctx.book.by_id
    known = {(r.id, c.name) for r in records.values() for c in r.components}
    for deployment_id, component in sorted(managed - known):
        if deployment_id in desired_ids and deployment_id not in records:
            continue
        log.warning("removing leftover %s/%s that no record accounts for", deployment_id, component)
        try:
            with ctx.long_step():
                ctx.backend.remove(deployment_id, component)
        except MargoLiteError as exc:
            log.error("cannot remove leftover %s/%s: %s", deployment_id, component, exc)
    return True


def prune_packages(ctx: Context) -> None:
    """Drop the cached packages that no record uses any more."""
    keep = {
        c.data[PACKAGE_FACT]
        for r in ctx.book.by_id.values()
        for c in r.components
        if c.data.get(PACKAGE_FACT)
    }
    if not keep and not (ctx.cfg.state_dir / PACKAGE_CACHE).exists():
        return  # no package was ever cached: the package store is not even loaded
    try:
        ctx.parts.packages.prune(keep)
    except MargoLiteError as exc:
        log.warning("cannot prune the package cache: %s", exc)
