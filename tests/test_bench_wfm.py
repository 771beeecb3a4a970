"""`bench/wfm.py --quick` (the Margo 1.0 profile of the benchmark) prints every figure, each
with a number and its unit, and the goals with a verdict; the exact ones pass: an idle poll
is one request (a conditional GET answered 304) on a kept-alive connection (no handshake),
writes nothing, and an idle `once` is one new handshake and writes nothing to state_dir.
Timing goals belong to the benchmark's reader, not to assertions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench import wfm

ROOT = Path(__file__).resolve().parent.parent
EXACT = [
    "v1: idle poll 1 request (a conditional GET, 304)",
    "v1: a running agent keeps its connection (0 handshakes)",
    "v1: kept-alive idle poll <= 1 KiB on the wire",
    "v1: first poll <= 1.1 x (handshake + kept-alive poll)",
    "v1: idle poll writes 0 B",
    "v1: idle `once` writes 0 B to state_dir",
    "v1: idle `once` 1 handshake (a new process)",
]


def test_quick_v1_bench_prints_every_figure_and_the_exact_goals_pass():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wfm.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    values = {}
    for key, label, unit in wfm.ROWS:
        row = next((line for line in lines if line.startswith(label + " ")), None)
        assert row is not None, f"{label} not printed:\n{result.stdout}"
        match = re.match(rf"{re.escape(label)}\s+(-?\d+\.\d+)\s+{re.escape(unit)}\s", row)
        assert match, row
        values[key] = float(match[1])
    assert values["v1_idle_requests"] == 1 and values["v1_once_requests"] == 1
    assert values["v1_first_poll_wire_bytes"] > values["anchor_v1_handshake_bytes"] > 1000
    assert values["v1_idle_wire_bytes"] < values["anchor_v1_handshake_bytes"]
    verdicts = {}
    for goal in wfm.GOALS:
        row = next((line for line in lines if line.startswith(goal.text + " ")), None)
        assert row is not None, f"{goal.text} not printed"
        verdicts[goal.text] = "pass" if " pass " in row + " " else "FAIL"
    assert [text for text in EXACT if verdicts[text] != "pass"] == []
