"""Power-cut torture with `--kill-group`: the agent's whole process group is SIGKILLed, its
podman calls too, as a watchdog or OOM kill under systemd's KillMode=mixed does (no reboot
follows). podman 4.3 can then leave a killed container's port forwarding ahead of the live
one's; after every such stop the agent checks its published ports (margo_lite/portcheck.py).

The torture's own check after each convergence fetches every deployment's page through its
published port, so a port that goes nowhere is a violation. Here also: every restart after a
kill said so in the log and ran the port check. Count and seed: MARGO_LITE_KILL_GROUP_KILLS /
MARGO_LITE_KILL_GROUP_SEED. The long run: `bench/torture.py --kill-group --kills 200`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.support.engines import free_port
from tests.support.torture import Torture

pytestmark = [pytest.mark.slow, pytest.mark.engine]

KILLS = int(os.environ.get("MARGO_LITE_KILL_GROUP_KILLS", "20"))
SEED = int(os.environ.get("MARGO_LITE_KILL_GROUP_SEED", "20261127"))


@pytest.mark.skipif(
    Path(sys.prefix).name == ".venv-pypi" and "MARGO_LITE_KILL_GROUP_KILLS" not in os.environ,
    reason="runs once per CI run, in .venv-debian, as tests/test_torture.py does",
)
def test_group_kills_leave_every_published_port_reaching_its_container(rig):
    torture = Torture(
        rig, seed=SEED, ports=[free_port() for _ in range(3)], kill_group=True, say=print
    )
    report = torture.run(KILLS)
    log = rig.log_text()
    unclean = log.count("the last run did not stop cleanly")
    checks = re.findall(
        r"port check: (\d+) published port\(s\) checked, (\d+) stale forwarding rule\(s\) "
        r"removed, (\d+) container\(s\) restarted, (\d+) still unreachable",
        log,
    )
    removed = sum(int(c[1]) for c in checks)
    restarted = sum(int(c[2]) for c in checks)
    print(report.summary())
    print(report.phase_table())
    print(
        f"kill-group port checks: {len(checks)} after {unclean} unclean stops; "
        f"{removed} stale forwarding rule(s) removed, {restarted} container(s) restarted"
    )
    assert report.violations == [], "\n".join(report.violations + report.kill_log[-5:])
    assert report.kills >= KILLS
    # between two starts: the run before stopped cleanly, or the next one noticed it did not
    between = log.split("margo-lite started for device")[1:-1]
    assert len(between) >= report.kills // 2
    for text in between:
        assert ("margo-lite stopped" in text) != ("did not stop cleanly" in text), text[-3000:]
    # each ran the check after its first cycle, unless killed again before (a quarter are)
    assert len(checks) >= report.kills // 2
    assert all(c[3] == "0" for c in checks), checks
