"""Commit to Installed on podman, and the anchors of its bound: the wait for the next poll,
podman alone doing the same, the settle window.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import goals
from bench.figures import Counts, Figure, fig
from bench.processes import TimedGitServer
from margo_lite import config
from margo_lite.devkit import wossim
from margo_lite.records import POLL_RECORD
from margo_lite.statestore import StateStore
from tests.support import engines
from tests.support.rig import Rig, app_files, deployment
from tests.support.wait import wait_for

DEVICE_E2E = "gw-e2e"  # the device id tests/support/rig.py configures


def installed_after(rig: Rig, dep_id: str, after: float) -> float:
    """When the WOS simulator received Installed for `dep_id` after `after` (monotonic)."""
    path = f"/device/{DEVICE_E2E}/deployment/{dep_id}/status"

    def seen() -> float | None:
        if rig.agent is not None and rig.agent.poll() is not None:
            raise RuntimeError(f"the agent exited:\n{rig.log_text()[-2000:]}")
        for r in rig.sim.requests(path, "POST"):
            if r.at > after and r.answer == 201:
                state = r.json()["status"]["state"]
                if state == "Failed":
                    raise RuntimeError(f"{dep_id} failed: {r.json()}")
                if state == "Installed":
                    return r.at
        return None

    return wait_for(seen, timeout=180, interval=0.01, what=f"{dep_id} Installed at the WOS")


def latency_figures(tmp: Path, counts: Counts, environ: dict[str, str]) -> list[Figure]:
    """Commit to Installed at the WOS, `margo-lite run` with a 1 s interval, podman; and the
    anchors of its bound: the wait for the next poll, podman alone, the settle window."""
    (tmp / "srv").mkdir()
    (tmp / "rig").mkdir()
    repo = "desired.git"

    def poll_wait(committed: float) -> float:
        return server.answered_after_begun(repo, committed) - committed

    with wossim.WosSimulator() as sim, TimedGitServer(tmp / "srv") as server:
        rig = Rig(tmp / "rig", server, environ, sim)  # interval 1s, jitter 0, builtin compose
        repo = rig.upstream.path.name
        rig.upstream.commit({"README.md": "nothing yet\n"})
        try:
            rig.start()
            runtime = StateStore(rig.tmp / "run")

            def idle() -> bool:  # the first revision read and applied, then polled again
                if rig.agent is not None and rig.agent.poll() is not None:
                    raise RuntimeError(f"the agent exited:\n{rig.log_text()[-2000:]}")
                record = runtime.read_json(POLL_RECORD)
                return bool(record) and record["last_poll_result"] == "unchanged"

            # A commit made while the first poll is still fetching is not seen before the
            # next poll, and the poll-wait anchor would count a request of the first one.
            wait_for(idle, timeout=120, what="the agent idle after its first poll")
            port = engines.free_port()
            rig.upstream.commit(app_files(port, "v0"))
            committed = time.monotonic()
            install = installed_after(rig, "web-1", committed) - committed
            install_wait = poll_wait(committed)
            updates, waits = [], []
            for k in range(1, counts.updates + 1):
                rig.upstream.commit(
                    {"web-1.yaml": deployment("web-1", greeting=f"v{k}", port=port)}
                )
                committed = time.monotonic()
                updates.append(installed_after(rig, "web-1", committed) - committed)
                waits.append(poll_wait(committed))
            rig.stop()
        finally:
            rig.cleanup()
    alone = goals.podman_alone(environ, engines.IMAGE, engines.free_port(), runs=counts.updates)
    middle = sorted(range(len(updates)), key=updates.__getitem__)[len(updates) // 2]
    return [
        fig(
            "latency_install_s",
            "commit to Installed: new deployment",
            install,
            "s",
            "1 s poll interval, podman; includes the wait for the next poll",
        ),
        fig(
            "latency_update_s",
            "commit to Installed: parameter update",
            updates[middle],
            "s",
            f"median of {len(updates)}, max {max(updates):.2f} s; container recreated",
        ),
        fig(
            "latency_install_poll_wait_s",
            "anchor: commit to the next poll (install)",
            install_wait,
            "s",
            "the Git server's answer after the commit",
        ),
        fig(
            "latency_update_poll_wait_s",
            "anchor: commit to the next poll (that update)",
            waits[middle],
            "s",
        ),
        fig(
            "latency_install_podman_s",
            "anchor: podman alone, run -d",
            alone["latency_install_podman_s"],
            "s",
            f"same image, command and port; median of {counts.updates}",
        ),
        fig(
            "latency_update_podman_s",
            "anchor: podman alone, stop -t 1 + rm + run -d",
            alone["latency_update_podman_s"],
            "s",
            f"median of {counts.updates}",
        ),
        fig(
            "settle_s",
            "anchor: the settle window",
            config.RuntimeConfig().settle,
            "s",
            "runtime.settle (default): a start must stay up this long",
        ),
    ]


# --- the run -------------------------------------------------------------------------------


LATENCY_FIGURES = [
    ("latency_install_s", "commit to Installed: new deployment", "s"),
    ("latency_update_s", "commit to Installed: parameter update", "s"),
    ("latency_install_poll_wait_s", "anchor: commit to the next poll (install)", "s"),
    ("latency_update_poll_wait_s", "anchor: commit to the next poll (that update)", "s"),
    ("latency_install_podman_s", "anchor: podman alone, run -d", "s"),
    ("latency_update_podman_s", "anchor: podman alone, stop -t 1 + rm + run -d", "s"),
    ("settle_s", "anchor: the settle window", "s"),
]
