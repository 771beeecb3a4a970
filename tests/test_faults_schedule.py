"""When the agent tries again after a fault, measured on its injected clock.

The fault rows' backoffs ("Git polled again with poll.interval doubling", "a failed component
tried again from 10 s, doubling", "capabilities tried again from 10 s") are about time, and
time is what a test cannot wait for. Here the real `Agent` (its real Git source, outbox,
WOS client and, where a component must fail, real podman) runs on a fake monotonic clock:
the test calls `tick()`, moves the clock to when `tick()` says something is due next, and
writes down the clock each time the agent reached out. The gaps between those instants are
the backoff, exactly, with no sleeping.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite import backends, config
from margo_lite.agent import Agent, Parts
from margo_lite.devkit import wossim
from tests.conftest import run_cli
from tests.support import engines
from tests.support.faults import proves
from tests.support.gitserver import Fault, GitServer
from tests.support.rig import APP, Rig, deployment

EPOCH = dt.datetime(2026, 3, 2, 12, 0, 0)  # a Monday noon: no polling window is near


class FakeClock:
    """The agent's monotonic clock and wall clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now)


def make_agent(rig: Rig, clock: FakeClock, environ: dict[str, str] | None) -> Agent:
    cfg = config.load_config(rig.config)
    parts = Parts.build(cfg)
    if environ is not None:  # the real podman backend on the test's private store
        parts.backend_factory = lambda: backends.select(
            cfg.runtime, cfg.state_dir, environ, device=cfg.device.id
        )
    agent = Agent(cfg, parts=parts, clock=clock, wall=clock.wall, rand=lambda: 0.5)
    agent.start()
    return agent


def run_until(agent: Agent, clock: FakeClock, until: float, done=lambda: False) -> None:
    """tick(), then jump the clock to what tick() says is due next; bounded in count."""
    for _ in range(10_000):
        if clock.now >= until or done():
            return
        clock.now += max(agent.tick(), 0.001)
    raise AssertionError("the agent kept asking to be ticked at once")


def gaps(instants: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(instants)]


def doubling(base: float, cap: float, count: int) -> list[float]:
    return [min(cap, base * 2**k) for k in range(count)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "srv").mkdir()
    with GitServer(tmp_path / "srv") as git:
        yield git


@pytest.fixture
def sim() -> Iterator[wossim.WosSimulator]:
    with wossim.WosSimulator() as wos:
        yield wos


@proves("git-backoff", "git-status-shows-error")
def test_git_faults_are_polled_again_with_the_interval_doubling(tmp_path, server, sim):
    """interval 1 s, max_backoff 8 s: while the server fails, polls 2, 4, 8, 8 s apart; the
    first good poll brings the interval back."""
    rig = Rig(tmp_path, server, {}, sim, {"poll": {"max_backoff": "8s"}})
    rig.upstream.commit({"README.md": "no deployments\n"})
    clock = FakeClock()
    polls: list[float] = []
    agent = make_agent(rig, clock, None)
    original = agent.parts.source.poll

    def poll_noted():  # the real poll, with the instant it was made
        polls.append(clock.now)
        return original()

    agent.parts.source.poll = poll_noted
    try:
        server.fault = Fault.SERVER_ERROR
        run_until(agent, clock, clock.now + 31)
        assert gaps(polls) == doubling(2.0, 8.0, len(polls) - 1)
        assert gaps(polls)[:4] == [2.0, 4.0, 8.0, 8.0]
        assert server.requests == len(polls)  # each poll reached the server once
        shown = run_cli("-c", str(rig.config), "status")  # as the operator looks
        assert shown.returncode == 0, shown.stderr
        assert "[GIT_SERVER_ERROR]" in shown.stdout, shown.stdout
        server.fault = None
        recovered = len(polls)
        run_until(agent, clock, clock.now + 12)
        assert gaps(polls[recovered:]) == [1.0] * (len(polls) - recovered - 1)
        assert len(polls) - recovered >= 3
    finally:
        agent.stop()


@proves("capabilities-backoff")
def test_capabilities_are_tried_again_from_10_s_doubling(tmp_path, server, sim):
    """The WOS is down at start: capabilities tried at once, then 10, 20, 40, 40 s later
    (max_backoff 40 s), and not again once delivered."""
    rig = Rig(tmp_path, server, {}, sim, {"poll": {"max_backoff": "40s", "interval": "60s"}})
    rig.upstream.commit({"README.md": "no deployments\n"})
    server.fault = Fault.NOT_FOUND  # no desired state: the engine is never asked
    clock = FakeClock()
    agent = make_agent(rig, clock, None)
    tries: list[float] = []
    original = agent.parts.client.send_capabilities

    def send_noted(body):
        tries.append(clock.now)
        return original(body)

    agent.parts.client.send_capabilities = send_noted
    try:
        sim.fault = "down"
        run_until(agent, clock, clock.now + 111)
        assert tries and tries[0] == 1000.0
        assert gaps(tries) == [10.0, 20.0, 40.0, 40.0]
        assert "gw-e2e" not in sim.capabilities
        sim.fault = None
        run_until(agent, clock, clock.now + 200, done=lambda: "gw-e2e" in sim.capabilities)
        assert "gw-e2e" in sim.capabilities
        sent = len(tries)
        run_until(agent, clock, clock.now + 300)
        assert len(tries) == sent  # delivered: not sent again
    finally:
        agent.stop()


@pytest.mark.slow
@pytest.mark.engine
@proves("component-retry-backoff")
def test_failed_component_is_tried_again_on_its_backoff_not_at_each_poll(
    tmp_path, tmp_path_factory, server, sim, busybox_tar
):
    """A missing image: the component fails at once; polls every second find nothing new, but
    it is tried again only 10, 20, 40 s after (max_backoff 40 s), on real podman."""
    with engines.podman(tmp_path_factory.mktemp("pod"), busybox_tar) as environ:
        rig = Rig(tmp_path, server, environ, sim, {"poll": {"max_backoff": "40s"}})
        port = engines.free_port()
        rig.upstream.commit(
            {
                "apps/web/compose.yaml": APP.format(image="localhost/margo-test-missing:1"),
                "web-1.yaml": deployment("web-1", greeting="never", port=port),
            }
        )
        clock = FakeClock()
        agent = make_agent(rig, clock, environ)
        applied: list[float] = []
        backend = agent.backend
        original = backend.apply

        def apply_noted(unit):
            applied.append(clock.now)
            return original(unit)

        backend.apply = apply_noted
        polls_before = server.requests
        try:
            run_until(agent, clock, clock.now + 75, done=lambda: len(applied) > 6)
            assert gaps(applied) == [10.0, 20.0, 40.0], applied
            assert server.requests - polls_before >= 60  # it polled every second meanwhile
            state = agent.records["web-1"].state.value
            assert state == "Failed"
            assert sim.statuses("web-1")[-1]["status"]["error"]["code"] == "IMAGE_MISSING"
        finally:
            agent.stop()
            rig.cleanup()
