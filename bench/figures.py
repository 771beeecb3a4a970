"""What every benchmark module makes: a figure (key, label, value, unit, how), the counts of a
run, and how a value is rendered in the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    """How much each measurement does; `--quick` shrinks them for a smoke test."""

    polls: int = 1000  # idle polls of the long-running process (RSS, CPU, disk)
    long_polls: int = 10_000  # idle polls of the same process for the RSS growth
    onces: int = 3  # `margo-lite once` runs after it, on its state_dir
    git_polls: int = 200  # in-process idle polls, plain and with 2000 extra refs
    commits: int = 1000  # upstream commits fetched one by one (state_dir size)
    extra_refs: int = 2000
    deployments: int = 100  # records of the no-change reconcile
    reconciles: int = 50
    starts: int = 3  # cold starts timed to the first poll
    updates: int = 3  # parameter updates timed from commit to Installed


QUICK = Counts(
    polls=20, long_polls=40, git_polls=10, commits=5, reconciles=5, starts=1, updates=1, onces=2
)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None  # None: not measured (see note)
    unit: str
    note: str = ""


def fig(key: str, label: str, value: float | None, unit: str, note: str = "") -> Figure:
    return Figure(key, label, value, unit, note)


# --- the machine ---------------------------------------------------------------------------


def skipped(keys_labels: list[tuple[str, str, str]], reason: str) -> list[Figure]:
    return [
        fig(key, label, None, unit, f"not measured: {reason}") for key, label, unit in keys_labels
    ]


def render(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ratio", "s") or (unit.startswith("ms") and value < 10):
        return f"{value:.2f}"
    if unit.startswith("ms") or unit.startswith("requests"):
        return f"{value:.1f}"
    return f"{value:.0f}"  # bytes, KiB
