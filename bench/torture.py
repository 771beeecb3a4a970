"""Power-cut torture, the long run: the agent against a local Git server, the WOS simulator
and podman, through a churn of installs, parameter updates, package updates and removals,
SIGKILLed at random instants and restarted each time.

    .venv-debian/bin/python bench/torture.py [--kills 500] [--seed N] [--verbose]

After every restart's convergence and at the end it checks: every state record reads; the
labelled containers are exactly the desired ones (one per service, running, serving the
committed parameters and package); the WOS's last status of each deployment matches. Prints
kills, convergences and violations (each with the seed and the kill instant before it);
exits 1 on any violation. The churn and the checks are in tests/support/torture.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from margo_lite.devkit import wossim
from tests.support import engines
from tests.support.gitserver import GitServer
from tests.support.rig import Rig
from tests.support.torture import Torture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=500, help="SIGKILLs to deliver (500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (1)")
    parser.add_argument("--deployments", type=int, default=3, help="deployments churned (3)")
    parser.add_argument(
        "--max-violations", type=int, default=5, help="stop after this many violations (5)"
    )
    parser.add_argument(
        "--kill-group",
        action="store_true",
        help="kill podman calls in flight too (podman 4.3 may then leave stale DNAT rules "
        "in the host firewall; see tests/support/torture.py)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every kill as it happens")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the agent, its containers and podman store go too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with tempfile.TemporaryDirectory(prefix="margo-torture-") as top:
        top_path = Path(top)
        (top_path / "image").mkdir()
        (top_path / "podman").mkdir()
        (top_path / "git").mkdir()
        (top_path / "device").mkdir()
        image = engines.build_busybox_tar(top_path / "image")
        with (
            engines.podman(top_path / "podman", image) as environ,
            GitServer(top_path / "git") as server,
            wossim.WosSimulator() as sim,
        ):
            rig = Rig(top_path / "device", server, environ, sim)
            try:
                torture = Torture(
                    rig,
                    seed=args.seed,
                    ports=[engines.free_port() for _ in range(args.deployments)],
                    max_violations=args.max_violations,
                    kill_group=args.kill_group,
                    say=print if args.verbose else lambda line: None,
                )
                report = torture.run(args.kills)
            finally:
                rig.cleanup()
    print(
        f"machine: {platform.node()}, {platform.machine()}, {_cpus()} CPUs, Python "
        f"{platform.python_version()}"
    )
    print(report.text())
    return 1 if report.violations else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
