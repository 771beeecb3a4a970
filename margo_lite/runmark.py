"""The run mark: a file in `runtime_dir` while the agent runs, which a clean stop removes.

Found at start, it says the last run did not stop cleanly (a watchdog or OOM kill), and the
daemon has `portcheck` check the published ports after the first cycle. `runtime_dir` is
tmpfs: a reboot clears the mark together with the firewall, so a reboot needs no check.
Kept apart from `portcheck` so that a clean start does not load the check.
"""

from __future__ import annotations

from pathlib import Path

from margo_lite import logs

log = logs.get(__name__)

MARKER = "agent.running"  # in runtime_dir while the agent runs; a clean stop removes it


def mark_running(runtime_dir: Path | str) -> bool:
    """Note that the agent runs; True when the last run did not stop cleanly."""
    marker = Path(runtime_dir) / MARKER
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        unclean = marker.exists()
        marker.write_text("the agent runs; a clean stop removes this file\n")
    except OSError as exc:  # volatile bookkeeping: never a reason not to start
        log.warning("cannot write %s: %s", marker, exc)
        return False
    if unclean:
        log.warning(
            "the last run did not stop cleanly (%s was left): published ports are checked "
            "after the first cycle",
            marker,
        )
    return unclean


def mark_stopped(runtime_dir: Path | str) -> None:
    try:
        (Path(runtime_dir) / MARKER).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", Path(runtime_dir) / MARKER, exc)
