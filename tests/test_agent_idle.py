"""A tick that finds nothing new costs no planning: with every deployment settled and the
poll unchanged, `reconcile` returns before `planner.plan`; a new commit plans again.

Real parts as in tests/test_agent_boundary.py (a bare repository written by C git, the
package store, the durable outbox, the WOS simulator on 127.0.0.1), its in-memory engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite import agent, config, planner, valueclass
from margo_lite.devkit import wossim
from tests.support.gitserver import Upstream
from tests.support.rig import APP, deployment
from tests.test_agent_boundary import TwinBackend

DEP = "web-1"


@pytest.fixture
def sim() -> Iterator[wossim.WosSimulator]:
    with wossim.WosSimulator() as simulator:
        yield simulator


def _device(tmp_path: Path, sim: wossim.WosSimulator) -> tuple[agent.Agent, TwinBackend, Upstream]:
    upstream = Upstream(tmp_path / "repo.git")
    upstream.commit(
        {
            "apps/web/compose.yaml": APP.format(image="example.com/web:1"),
            f"{DEP}.yaml": deployment(DEP, greeting="hello", port=18090),
        }
    )
    cfg = config.parse_config(
        {
            "device": {
                "id": "gw-idle",
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "wos": {"url": sim.url},
            "git": {"url": str(upstream.path)},
            "poll": {"interval": "1s", "jitter": 0},
        }
    )
    twin = TwinBackend()
    parts = valueclass.replace(agent.Parts.build(cfg), backend_factory=lambda: twin)
    return agent.Agent(cfg, parts=parts), twin, upstream


def test_an_idle_tick_does_not_plan_and_a_new_commit_does(tmp_path, sim, monkeypatch):
    device, twin, upstream = _device(tmp_path, sim)
    device.start()
    device.tick(poll_now=True)
    assert [s["status"]["state"] for s in sim.statuses(DEP)][-1] == "Installed"
    device.tick(poll_now=True)  # the plan after a change: it finds nothing left to do
    unit = twin.running[(DEP, "web")]
    plans = []
    real_plan = planner.plan

    def counted(*args, **kwargs):
        plans.append(1)
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(planner, "plan", counted)
    reports = len(sim.statuses(DEP))
    for _ in range(5):
        device.tick(poll_now=True)  # a poll that finds the same commit; heal may run
    assert plans == []
    assert len(sim.statuses(DEP)) == reports

    upstream.commit({f"{DEP}.yaml": deployment(DEP, greeting="changed", port=18090)})
    device.tick(poll_now=True)
    assert plans, "a new commit is planned"
    assert twin.running[(DEP, "web")].digest != unit.digest
    assert [s["status"]["state"] for s in sim.statuses(DEP)][-1] == "Installed"


def test_a_restart_with_nothing_to_do_never_plans(tmp_path, sim, monkeypatch):
    device, _, _ = _device(tmp_path, sim)
    device.start()
    device.tick(poll_now=True)
    again = agent.Agent(device.cfg, parts=device.parts)  # a new process on the same state
    plans = []
    real_plan = planner.plan
    monkeypatch.setattr(planner, "plan", lambda *a, **k: plans.append(1) or real_plan(*a, **k))
    again.start()
    again.tick(poll_now=True)
    assert plans == []  # the idle mark: the revision is applied and nothing is to do
    again.tick(poll_now=True)
    assert plans == [] and again.desired is None
