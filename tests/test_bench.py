"""`bench/run --quick` prints every figure issue 10 asks for, and the exact ones meet their
goals: request counts, bytes on the wire, bytes written, byte ratios and the engine store of
the no-change figure. Timing goals belong to the benchmark's reader, not to assertions."""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import wfm

ROOT = Path(__file__).resolve().parent.parent

#: Every figure of the issue's list, by its JSON key.
WITHOUT_ENGINE = {
    "idle_requests": "requests/poll",
    "idle_wire_bytes": "B/poll",
    "idle_disk_bytes": "B/poll",
    "idle_process_cpu_ms": "ms/poll",
    "idle_git_cpu_ms": "ms/poll",
    "change_edit_bytes": "B",
    "change_edit_c_git_bytes": "B",
    "change_edit_ratio": "ratio",
    "change_new5_bytes": "B",
    "change_new5_c_git_bytes": "B",
    "change_new5_ratio": "ratio",
    "proxy_idle_requests": "requests/poll",  # through squid, the direct poll as anchor
    "proxy_idle_wire_bytes": "B/poll",
    "proxy_idle_client_bytes": "B/poll",
    "proxy_idle_ratio": "ratio",
    "proxy_idle_cpu_ms": "ms/poll",
    "refs_requests": "requests/poll",
    "refs_wire_bytes": "B/poll",
    "refs_wire_ratio": "ratio",
    "refs_cpu_ms": "ms/poll",
    "refs_c_git_ls_remote_bytes": "B",
    "rss_start_kib": "KiB",
    "rss_polls_kib": "KiB",
    "rss_growth_kib": "KiB",
    "rss_growth_long_kib": "KiB",
    "anchor_rss_bare_kib": "KiB",  # issue 17's anchors, measured in the same run
    "anchor_rss_deps_kib": "KiB",
    "anchor_rss_agent_deps_kib": "KiB",
    "state_dir_bytes": "B",
    "state_dir_peak_bytes": "B",
    "anchor_c_git_tip_bytes": "B",
    "reconcile_cpu_ms": "ms CPU",
    "tick_cpu_ms": "ms CPU",
    "once_requests": "requests/run",
    "cold_start_ms": "ms",
    "anchor_python_start_ms": "ms",
    "anchor_python_deps_start_ms": "ms",
}
#: The Margo 1.0 profile (bench/wfm.py, whose own quick test is tests/test_bench_wfm.py).
V1 = {key: unit for key, _, unit in wfm.ROWS}
#: Measured when the other dependency set's environment (.venv-pypi) is there.
OPTIONAL = {"rss_polls_pypi_kib": "KiB", "rss_restart_polls_kib": "KiB"}
ENGINE = {
    "latency_install_s": "s",
    "latency_update_s": "s",
    "latency_install_poll_wait_s": "s",
    "latency_update_poll_wait_s": "s",
    "latency_install_podman_s": "s",
    "latency_update_podman_s": "s",
    "settle_s": "s",
}

#: The exact figures' goals (docs/proof.md, "Benchmark"): key -> (comparison, goal, source).
GOALS = {
    "idle_requests": (operator.eq, 1, "issue 3: an idle poll is 1 HTTP request"),
    "idle_wire_bytes": (operator.le, 1024, "issue 3: at most 1 KiB on the wire"),
    "idle_disk_bytes": (operator.eq, 0, "issue 3: an idle poll writes 0 bytes"),
    "change_edit_ratio": (operator.le, 1.05, "issue 3: a change costs <= 1.05 x C git"),
    "change_new5_ratio": (operator.le, 1.05, "issue 3: a change costs <= 1.05 x C git"),
    "refs_requests": (operator.eq, 1, "2000 extra refs: still 1 request"),
    "refs_wire_bytes": (operator.le, 1024, "2000 extra refs: still at most 1 KiB"),
    "refs_wire_ratio": (operator.le, 1.01, "2000 extra refs cost no more bytes"),
    "state_dir_bytes": (operator.le, 64 * 1024, "issue 3: state_dir stays bounded"),
    "once_requests": (operator.eq, 1, "issue 17: an idle `once` after the first is 1 request"),
}
#: Ratios are the quotient of the two figures measured beside them.
RATIOS = {
    "change_edit_ratio": ("change_edit_bytes", "change_edit_c_git_bytes"),
    "change_new5_ratio": ("change_new5_bytes", "change_new5_c_git_bytes"),
}


def bench(*args: str) -> subprocess.CompletedProcess:
    # VIRTUAL_ENV: bench/run uses this interpreter instead of running tools/setup-host.
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
    return subprocess.run(
        [str(ROOT / "bench" / "run"), "--quick", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def figures(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert {"nproc", "cpu", "ram"} <= report["machine"].keys()
    return {f["key"]: f for f in report["figures"]}


def check_measured(found: dict[str, dict], expected: dict[str, str]) -> None:
    for key, unit in expected.items():
        assert key in found, key
        assert found[key]["unit"] == unit, found[key]
        assert isinstance(found[key]["value"], int | float), found[key]


@pytest.mark.slow  # about 30 s: a whole (small) benchmark run
def test_quick_run_without_engine_prints_every_other_figure():
    result = bench("--json", "--no-engine")
    found = figures(result)
    check_measured(found, WITHOUT_ENGINE | V1)
    assert found.keys() == WITHOUT_ENGINE.keys() | V1.keys() | ENGINE.keys() | OPTIONAL.keys()
    for key in ENGINE:
        assert found[key]["value"] is None and "not measured" in found[key]["note"]
    for key, (meets, goal, source) in GOALS.items():
        assert meets(found[key]["value"], goal), f"{found[key]}: goal {source}"
    for key, (ours, theirs) in RATIOS.items():
        expected = found[ours]["value"] / found[theirs]["value"]
        assert found[key]["value"] == pytest.approx(expected), key
    # the no-change reconcile ran against an engine store holding every component's container
    # (created as the built-in driver names them), and its first sweep removed none
    note = found["reconcile_cpu_ms"]["note"]
    match = re.match(r"(\d+) components Installed, (\d+) containers in .* \((\d+) after\)", note)
    assert match, note
    assert int(match[1]) == 300 and match[1] == match[2] == match[3], note
    # the table (on stderr with --json): the machine, then one row per figure
    assert "machine: " in result.stderr and " RAM" in result.stderr
    rows = result.stderr.splitlines()
    for figure in found.values():
        assert any(row.startswith(figure["label"] + " ") for row in rows), figure["label"]
    # then issue 17's goals, each with a verdict; the exact ones pass
    verdicts = {g["figure"]: g["verdict"] for g in json.loads(result.stdout)["goals"]}
    assert set(verdicts.values()) <= {"pass", "FAIL", "not measured"}
    assert verdicts["latency_install_s"] == "not measured"  # --no-engine
    exact = ("once_requests", "idle_requests", "idle_disk_bytes", "refs_wire_ratio")
    for key in (*exact, "v1_idle_requests", "v1_idle_handshakes", "v1_once_state_bytes"):
        assert verdicts[key] == "pass", key
    assert any(row.startswith("goal (issue 17)") for row in rows)


@pytest.mark.slow
@pytest.mark.engine
def test_quick_run_on_podman_measures_every_figure():
    check_measured(figures(bench("--json")), WITHOUT_ENGINE | V1 | ENGINE)
