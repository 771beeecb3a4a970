"""margo-lite's benchmark: every figure of issue 10 in one table (or JSON), on real parts.

    bench/run [--quick] [--json] [--no-engine]

It measures against C git's http-backend (behind the test bridge), the WOS simulator, real
`margo-lite run` processes and, for the latency figure, podman with a test-only
containers.conf and a locally built busybox image. Those parts come from `tests/support/`
(gitserver, engines, rig), so this script needs the test environment `tools/setup-host`
builds; `bench/gitsource.py` and `bench/plan.py` supply the repository and planning
measurements. Ratios are measured side by side in the same run, never against old numbers.
Figures only: nothing here asserts a goal, and everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dulwich  # noqa: E402
import pytest  # noqa: E402  (tests/support/engines skips with pytest.skip)

from bench import goals  # noqa: E402
from bench import wfm as wfmbench  # noqa: E402
from bench.figures import QUICK, Counts, Figure, fig, render, skipped  # noqa: E402
from bench.fleet import reconcile_figures  # noqa: E402
from bench.gitfigures import git_figures  # noqa: E402
from bench.latency import LATENCY_FIGURES, latency_figures  # noqa: E402
from bench.processes import private_podman, process_figures  # noqa: E402
from margo_lite import logs  # noqa: E402
from tests.support import engines  # noqa: E402


def machine() -> dict[str, str | int]:
    """What the figures ran on: CPUs, CPU model, RAM, kernel, Python and dulwich."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dulwich": ".".join(map(str, dulwich.__version__)),
        "git": tool_version("git"),
        "podman": tool_version("podman"),
    }


def tool_version(name: str) -> str:
    """The last word of `NAME --version`, or "absent"."""
    if not shutil.which(name):
        return "absent"
    out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.split()[-1] if out.returncode == 0 and out.stdout else "unknown"


# --- the Git repository, in-process (bench/gitsource.py) -----------------------------------


#: The order of the table: the issue's list.
ORDER = [
    "idle_requests",
    "idle_wire_bytes",
    "idle_disk_bytes",
    "idle_process_cpu_ms",
    "idle_git_cpu_ms",
    "change_edit_bytes",
    "change_edit_c_git_bytes",
    "change_edit_ratio",
    "change_new5_bytes",
    "change_new5_c_git_bytes",
    "change_new5_ratio",
    "proxy_idle_requests",
    "proxy_idle_wire_bytes",
    "proxy_idle_client_bytes",
    "proxy_idle_ratio",
    "proxy_idle_cpu_ms",
    "refs_requests",
    "refs_wire_bytes",
    "refs_wire_ratio",
    "refs_cpu_ms",
    "refs_c_git_ls_remote_bytes",
    "rss_start_kib",
    "rss_polls_kib",
    "rss_growth_kib",
    "rss_growth_long_kib",
    "rss_restart_polls_kib",
    "rss_polls_pypi_kib",
    "anchor_rss_bare_kib",
    "anchor_rss_deps_kib",
    "anchor_rss_agent_deps_kib",
    "state_dir_bytes",
    "state_dir_peak_bytes",
    "anchor_c_git_tip_bytes",
    "latency_install_s",
    "latency_update_s",
    "latency_install_poll_wait_s",
    "latency_update_poll_wait_s",
    "latency_install_podman_s",
    "latency_update_podman_s",
    "settle_s",
    "reconcile_cpu_ms",
    "tick_cpu_ms",
    "once_requests",
    "cold_start_ms",
    "anchor_python_start_ms",
    "anchor_python_deps_start_ms",
    *wfmbench.ORDER,  # the Margo 1.0 profile (bench/wfm.py)
]


def measure(counts: Counts, engine: bool, progress: Callable[[str], None]) -> list[Figure]:
    figures: list[Figure] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="margo-bench-")))
        progress("Git: idle poll, change fetch, extra refs, state_dir growth")
        (tmp / "git").mkdir()
        figures += git_figures(tmp / "git", counts)
        progress("anchors: bare python, python with the dependencies imported")
        anchors = goals.python_anchors(sys.executable, ROOT)
        figures += [
            fig("anchor_rss_bare_kib", "anchor: RSS of bare python", anchors["anchor_rss_bare_kib"],
                "KiB", "python -c, VmRSS"),
            fig("anchor_rss_deps_kib", "anchor: RSS of python with run's imports but margo_lite",
                anchors["anchor_rss_deps_kib"], "KiB",
                "the stdlib modules `run` imports + urllib3 + yaml + dulwich"),
            fig("anchor_rss_agent_deps_kib", "anchor: RSS of python with the agent's own imports "
                "but margo_lite", anchors["anchor_rss_agent_deps_kib"], "KiB",
                "the same without dulwich, which only the forked fetch and read load"),
            fig("anchor_python_start_ms", "anchor: bare python, start to exit",
                anchors["anchor_python_start_ms"], "ms", "python -c pass, median of 5"),
            fig("anchor_python_deps_start_ms", "anchor: python importing run's dependencies",
                anchors["anchor_python_deps_start_ms"], "ms",
                "start to exit; the stdlib modules `run` imports + urllib3 + yaml; median of 5"),
        ]  # fmt: skip
        progress(
            f"margo-lite run: {counts.long_polls} idle polls, {counts.starts} cold start(s), "
            f"{counts.onces} x once"
        )
        (tmp / "proc").mkdir()
        with private_podman(tmp / "podman-idle") as env:
            figures += process_figures(tmp / "proc", counts, env)
            progress(f"Margo 1.0: {counts.polls} idle polls over mTLS, {counts.onces} x once")
            v1 = wfmbench.figures(tmp / "v1", counts.polls, counts.onces, env)
            figures += [fig(*row) for row in v1]
        progress(f"reconcile(): {counts.deployments} deployments, nothing changed")
        (tmp / "fleet").mkdir()
        tar = engines.build_busybox_tar(Path(tempfile.mkdtemp(dir=tmp)))
        (tmp / "podman-fleet").mkdir()
        with engines.podman(tmp / "podman-fleet", tar) as env:
            figures += reconcile_figures(tmp / "fleet", counts, env)
        if not engine:
            figures += skipped(LATENCY_FIGURES, "--no-engine")
            return figures
        progress("podman: commit to Installed")
        try:
            (tmp / "podman").mkdir()
            environ = stack.enter_context(engines.podman(tmp / "podman", tar))
        except pytest.skip.Exception as exc:
            figures += skipped(LATENCY_FIGURES, str(exc))
            return figures
        (tmp / "latency").mkdir()
        figures += latency_figures(tmp / "latency", counts, environ)
    return figures


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"margo-lite benchmark, {report['date']}{' (--quick)' if report['quick'] else ''}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, dulwich {m['dulwich']}, git {m['git']}, podman {m['podman']}",
        "",
    ]
    rows = [("figure", "value", "unit", "how")] + [
        (f["label"], render(f["value"], f["unit"]), f["unit"], f["note"]) for f in report["figures"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, (label, value, unit, note) in enumerate(rows):
        lines.append(
            f"{label:<{widths[0]}}  {value:>{widths[1]}}  {unit:<{widths[2]}}  {note}".rstrip()
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + 20))
    lines += ["", goals.table(report["goals"]), f"\ntotal time {report['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test)")
    parser.add_argument(
        "--json", action="store_true", help="JSON on stdout (the table goes to stderr)"
    )
    parser.add_argument("--no-engine", action="store_true", help="skip the podman latency figures")
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else Counts()
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"bench: {text} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    logging.getLogger(logs.LOGGER_NAME).setLevel(logging.ERROR)  # e.g. "plain http" warnings
    figures = sorted(
        measure(counts, not args.no_engine, progress), key=lambda f: ORDER.index(f.key)
    )
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "counts": dataclasses.asdict(counts),
        "seconds": round(time.monotonic() - started, 1),
        "figures": [dataclasses.asdict(f) for f in figures],
        "goals": goals.judge({f.key: f.value for f in figures}, goals.GOALS + wfmbench.GOALS),
    }
    if args.json:  # the table still goes to the reader, the JSON to the pipe
        print(table(report), file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
