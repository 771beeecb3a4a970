"""Errors decide scheduling, in-process: a component that failed for a stalled cause (the
policy refuses it) is not tried again until a new revision changes it, while one that
failed for a transient cause (the engine was away) is tried again on its backoff.

Real parts as in tests/test_agent_boundary.py (C git's repository, the package store, the
outbox, the WOS simulator over HTTP); the engine is the in-memory twin, and the agent runs
on a clock the test moves.
"""

from __future__ import annotations

from collections import Counter

from margo_lite.errors import EngineTransientError
from tests.support.gitserver import Upstream
from tests.support.rig import APP, deployment
from tests.test_agent_boundary import BAD, GOOD, _device, _last, sim  # noqa: F401

PRIVILEGED = APP.format(image="example.com/web:1").replace(
    "    stop_grace_period: 1s\n", "    stop_grace_period: 1s\n    privileged: true\n"
)


class CountingPackages:
    """The real package store, counting how often each location is prepared."""

    def __init__(self, store) -> None:
        self._store, self.prepared = store, Counter()

    def prepare(self, package_location, key_location, repo_files):
        self.prepared[package_location] += 1
        return self._store.prepare(package_location, key_location, repo_files)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_stalled_waits_for_a_new_revision_transient_is_retried(tmp_path, sim):  # noqa: F811
    now = [1000.0]
    device, twin = _device(
        tmp_path,
        sim,
        bad_files={
            "apps/bad/compose.yaml": PRIVILEGED,
            f"{BAD}.yaml": deployment(BAD, greeting="hello", port=18081, package="apps/bad"),
        },
        clock=lambda: now[0],
    )
    packages = device.parts.packages = CountingPackages(device.parts.packages)
    twin.faults[("apply", GOOD)] = EngineTransientError("the engine is away")
    device.start()
    device.tick()
    device.report(force=True)
    assert _last(sim, BAD)["error"]["code"] == "POLICY_DENIED"
    assert _last(sim, GOOD)["error"]["code"] == "ENGINE_UNAVAILABLE"
    assert packages.prepared == {"apps/bad": 1, "apps/web": 1}

    del twin.faults[("apply", GOOD)]  # the engine is back
    for _ in range(20):  # ten minutes on the agent's clock, past several backoffs
        now[0] += 30
        device.tick()
    device.report(force=True)
    assert _last(sim, GOOD)["state"] == "Installed"  # retried on its backoff
    assert packages.prepared["apps/bad"] == 1  # never again: only a change can fix it
    assert _last(sim, BAD)["error"]["code"] == "POLICY_DENIED"
    assert (BAD, "web") not in twin.running

    Upstream(tmp_path / "repo.git").commit({"apps/bad/compose.yaml": APP.format(image="x/web:1")})
    device.tick(poll_now=True)  # a new revision that changes it: tried at once
    device.report(force=True)
    assert packages.prepared["apps/bad"] == 2
    assert _last(sim, BAD)["state"] == "Installed"
    assert (BAD, "web") in twin.running
