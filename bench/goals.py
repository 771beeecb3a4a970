"""Issue 17's goals as a table: each figure against a bound computed from anchors measured
in the same run (bare python, python with the dependencies imported, C git's pack of the
tip, podman alone), with a pass/fail column. The anchors themselves are measured here too.

Figures, not tests: `bench/run` prints the verdicts, nothing fails on them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

MIB = 1024  # KiB
OVERHEAD_S = 0.3  # what margo-lite may add to a start, beside the poll wait and the settle


@dataclass(frozen=True)
class Goal:
    """`figure` (a key of the run's figures) compared with `bound(figures)` by `op`."""

    text: str
    figure: str
    op: str  # "<=", "<", "=="
    bound: Callable[[Mapping[str, float | None]], float | None]
    anchor: Callable[[Mapping[str, float | None]], str] = lambda f: ""


def _v(key: str) -> Callable[[Mapping[str, float | None]], float | None]:
    return lambda f: f.get(key)


def _times(factor: float, key: str) -> Callable[[Mapping[str, float | None]], float | None]:
    return lambda f: None if f.get(key) is None else factor * f[key]  # type: ignore[operator]


def _latency_bound(podman_key: str) -> Callable[[Mapping[str, float | None]], float | None]:
    def bound(f: Mapping[str, float | None]) -> float | None:
        parts = [
            f.get(podman_key),
            f.get(podman_key.replace("podman", "poll_wait")),
            f.get("settle_s"),
        ]
        return None if None in parts else sum(parts) + OVERHEAD_S  # type: ignore[arg-type]

    return bound


def _latency_anchor(kind: str) -> Callable[[Mapping[str, float | None]], str]:
    def text(f: Mapping[str, float | None]) -> str:
        return (
            f"poll wait {_n(f.get(f'latency_{kind}_poll_wait_s'))} s + podman alone "
            f"{_n(f.get(f'latency_{kind}_podman_s'))} s + settle {_n(f.get('settle_s'))} s "
            f"+ {OVERHEAD_S} s"
        )

    return text


def short(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")


def _n(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


GOALS = [
    Goal(
        "RSS idle after 1000 polls <= 25 MiB (this run's dependencies)",
        "rss_polls_kib",
        "<=",
        lambda f: 25 * MIB,
        lambda f: (
            f"bare python {_n(f.get('anchor_rss_bare_kib'), 0)} KiB; python with the stdlib "
            f"modules run needs + urllib3 + yaml + dulwich "
            f"{_n(f.get('anchor_rss_deps_kib'), 0)} KiB, without dulwich (the agent's "
            f"process: its fetches and reads are forked) "
            f"{_n(f.get('anchor_rss_agent_deps_kib'), 0)} KiB; a restart with nothing to "
            f"change {_n(f.get('rss_restart_polls_kib'), 0)} KiB; PyPI deps: "
            f"{_n(f.get('rss_polls_pypi_kib'), 0)} KiB"
        ),
    ),
    Goal("RSS growth over 10 000 idle polls < 1 MiB", "rss_growth_long_kib", "<", lambda f: MIB),
    Goal(
        "cold start to first request <= 100 ms",
        "cold_start_ms",
        "<=",
        lambda f: 100.0,
        lambda f: (
            f"bare python start to exit {_n(f.get('anchor_python_start_ms'), 1)} ms; python "
            f"importing the stdlib modules run needs + urllib3 + yaml, start to exit "
            f"{_n(f.get('anchor_python_deps_start_ms'), 1)} ms"
        ),
    ),
    Goal(
        "state_dir after 1000 one-file commits <= 3x C git's tip",
        "state_dir_bytes",
        "<=",
        _times(3, "anchor_c_git_tip_bytes"),
        lambda f: (
            f"C git's shallow clone of the tip: {_n(f.get('anchor_c_git_tip_bytes'), 0)} B "
            "(.pack + .idx)"
        ),
    ),
    Goal(
        "state_dir peak <= 4x C git's tip",
        "state_dir_peak_bytes",
        "<=",
        _times(4, "anchor_c_git_tip_bytes"),
    ),
    Goal(
        "commit to Installed, new deployment",
        "latency_install_s",
        "<=",
        _latency_bound("latency_install_podman_s"),
        _latency_anchor("install"),
    ),
    Goal(
        "commit to Installed, parameter update",
        "latency_update_s",
        "<=",
        _latency_bound("latency_update_podman_s"),
        _latency_anchor("update"),
    ),
    Goal(
        "idle `margo-lite once`, second and later runs: 1 request",
        "once_requests",
        "==",
        lambda f: 1,
    ),
    Goal(
        "no-change tick, 100 deployments: <= 1 ms CPU besides the poll",
        "tick_cpu_ms",
        "<=",
        lambda f: 1.0,
    ),
    Goal("keep: idle poll 1 request", "idle_requests", "==", lambda f: 1),
    Goal("keep: idle poll <= 658 B on the wire", "idle_wire_bytes", "<=", lambda f: 658),
    Goal("keep: idle poll writes 0 B", "idle_disk_bytes", "==", lambda f: 0),
    Goal(
        "keep: change fetch (one-file edit) <= 0.68x C git",
        "change_edit_ratio",
        "<=",
        lambda f: 0.68,
    ),
    Goal(
        "keep: change fetch (five new files) <= 0.68x C git",
        "change_new5_ratio",
        "<=",
        lambda f: 0.68,
    ),
    Goal("keep: 2000 extra refs cost no more bytes", "refs_wire_ratio", "<=", lambda f: 1.0),
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b + 1e-9,
    "<": lambda a, b: a < b,
    "==": lambda a, b: abs(a - b) < 1e-9,
}


def judge(
    figures: Mapping[str, float | None], goals: list[Goal] | None = None
) -> list[dict[str, object]]:
    """One row per goal (`GOALS` by default): the figure, its bound, the anchors and
    pass / fail / not measured."""
    rows = []
    for goal in GOALS if goals is None else goals:
        value, bound = figures.get(goal.figure), goal.bound(figures)
        if value is None or bound is None:
            verdict = "not measured"
        else:  # as printed: a ratio to 2 decimals, the rest as measured
            shown = round(value, 2) if goal.figure.endswith("_ratio") else value
            verdict = "pass" if _OPS[goal.op](shown, bound) else "FAIL"
        rows.append(
            {
                "goal": goal.text,
                "figure": goal.figure,
                "value": value,
                "bound": f"{goal.op} {short(bound)}" if bound is not None else "-",
                "anchor": goal.anchor(figures),
                "verdict": verdict,
            }
        )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    cells = [("goal (issue 17)", "figure", "bound", "verdict", "anchor, same run")] + [
        (str(r["goal"]), "-" if r["value"] is None else short(float(r["value"])),
         str(r["bound"]), str(r["verdict"]), str(r["anchor"]))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for i, c in enumerate(cells):
        lines.append(
            f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:<{widths[2]}}  "
            f"{c[3]:<{widths[3]}}  {c[4]}".rstrip()
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 8 + 20))
    return "\n".join(lines)


# --- anchors ---------------------------------------------------------------------------------

_RSS = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    importlib.import_module(name)\n"
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')))\n"
)
_NEEDED = (
    "import sys, json\n"
    "import margo_lite.cli, margo_lite.agent, margo_lite.daemon\n"
    "names = sorted(n for n in sys.modules if n.split('.')[0] in sys.stdlib_module_names\n"
    "               and not n.startswith('_') and '.' not in n)\n"
    "print(json.dumps(names))\n"
)


def python_anchors(python: str, root: Path, starts: int = 5) -> dict[str, float]:
    """RSS of bare python and of python with what `run` imports besides margo_lite (the
    standard library modules, urllib3, yaml, dulwich; and without dulwich, as the agent's
    process, whose fetches and reads run in forked children); the start-to-exit time of bare python
    and of python importing those (but dulwich, which a restart's first poll does not need)."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    needed = json.loads(
        subprocess.run([python, "-c", _NEEDED], env=env, capture_output=True, text=True,
                       check=True).stdout
    )  # fmt: skip
    deps = [*needed, "urllib3", "yaml", "dulwich.repo", "dulwich.object_store"]

    def rss(modules: list[str]) -> float:
        out = subprocess.run([python, "-c", _RSS, *modules], capture_output=True, text=True,
                             check=True, cwd="/")  # fmt: skip
        return float(out.stdout.strip())

    def start_ms(code: str) -> float:
        times = []
        for _ in range(starts):
            started = time.monotonic()
            subprocess.run([python, "-c", code], check=True, cwd="/")
            times.append((time.monotonic() - started) * 1000)
        return statistics.median(times)

    return {
        "anchor_rss_bare_kib": rss([]),
        "anchor_rss_deps_kib": rss(deps),
        "anchor_rss_agent_deps_kib": rss([*needed, "urllib3", "yaml"]),
        "anchor_python_start_ms": start_ms("pass"),
        # a restart's first poll needs no dulwich (the idle mark): the rest, imported
        "anchor_python_deps_start_ms": start_ms(
            f"import {', '.join([*needed, 'urllib3', 'yaml'])}"
        ),
    }


def c_git_tip_bytes(clone: Path) -> int:
    """The pack and index of a shallow clone of the tip: what C git keeps for it."""
    pack_dir = clone / "objects" / "pack"
    return sum(p.stat().st_size for p in pack_dir.iterdir() if p.suffix in (".pack", ".idx"))


def podman_alone(env: Mapping[str, str], image: str, port: int, runs: int = 3) -> dict[str, float]:
    """podman by itself doing what an install and an update of the bench's app do: `run -d`
    of the same image, command and published port; then stop (1 s grace, as the app's
    stop_grace_period), remove and run again. Medians of `runs`."""
    command = ["sh", "-c", "echo hi > /www/index.html; exec httpd -f -p 8080 -h /www"]

    def podman(*argv: str) -> None:
        subprocess.run(["podman", *argv], env=dict(env), check=True, capture_output=True,
                       timeout=120)  # fmt: skip

    def run(name: str) -> float:
        started = time.monotonic()
        podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", image, *command)
        return time.monotonic() - started

    installs, updates = [], []
    for k in range(runs):
        name = f"margo-bench-alone-{k}"
        installs.append(run(name))
        started = time.monotonic()
        podman("stop", "-t", "1", name)
        podman("rm", name)
        run(name)
        updates.append(time.monotonic() - started)
        podman("rm", "-f", "-t", "0", name)
    return {
        "latency_install_podman_s": statistics.median(installs),
        "latency_update_podman_s": statistics.median(updates),
    }


if __name__ == "__main__":  # the anchors alone, for a quick look
    print(python_anchors(sys.executable, Path(__file__).resolve().parent.parent))
