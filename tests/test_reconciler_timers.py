"""The reconciler's clocks, on the twins' clock: when it polls, retries, heals and reports.

`Device.run` is the daemon's loop (tick, then sleep what the tick asks) on a clock that
moves only in the test, so hours of schedule take milliseconds and every time is exact
(no jitter: `rand` is 0.5, `poll.jitter` 0). What is checked is when the Git server, the
engine and the WOS were called, as their logs would show.
"""

from __future__ import annotations

import datetime as dt

import pytest

from margo_lite.errors import EngineError, GitTransientError
from tests.support.twindevice import Device, app, settings


def _since(start: float, times: list[float]) -> list[float]:
    return [round(t - start, 3) for t in times]


@pytest.fixture
def device(tmp_path) -> Device:
    return Device(settings(tmp_path, poll={"max_backoff": "60s"}))


# --- retries of a failed component ----------------------------------------------------------


def test_a_failed_component_is_retried_on_a_doubling_backoff_up_to_the_cap(device):
    failure = EngineError("no such image", code="IMAGE_MISSING")
    device.backend.script("apply", "web-1", *[failure] * 5)
    device.source.commit(app())
    agent = device.started()
    start = device.clock.monotonic()

    device.run(agent, 250)

    applies = _since(start, [c.at for c in device.backend.calls_of("apply")])
    # 10 s after the first failure, doubling, capped at poll.max_backoff (60 s)
    assert applies == [0, 10, 30, 70, 130, 190]
    assert device.sender.states("web-1")[-1] == "Installed"
    assert device.sender.states("web-1").count("Failed") == 5


def test_a_success_resets_the_backoff(device):
    failure = EngineError("no such image", code="IMAGE_MISSING")
    device.backend.script("apply", "web-1", failure, failure, None)
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    device.run(agent, 100)
    assert device.sender.states("web-1")[-1] == "Installed"

    device.backend.script("apply", "web-1", failure, None)
    device.source.commit(app(greeting="bonjour"))
    agent.tick(poll_now=True)
    failed_at = device.backend.calls_of("apply")[-1].at
    device.run(agent, 60)
    assert _since(failed_at, [c.at for c in device.backend.calls_of("apply")][-1:]) == [10]


def test_a_new_revision_of_the_failed_deployment_is_tried_at_once(device):
    device.backend.faults[("apply", "web-1")] = EngineError("no", code="IMAGE_MISSING")
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    device.run(agent, 100)  # failures at 0, 10, 30, 70: the next one is due at 150
    assert len(device.backend.calls_of("apply")) == 4

    del device.backend.faults[("apply", "web-1")]
    device.source.commit(app(greeting="bonjour"))
    agent.tick(poll_now=True)  # SIGUSR1: poll now

    assert len(device.backend.calls_of("apply")) == 5
    assert device.env("web-1")["GREETING"] == "bonjour"


def test_a_new_revision_of_another_deployment_does_not_hurry_the_retry(device):
    device.backend.faults[("apply", "web-1")] = EngineError("no", code="IMAGE_MISSING")
    device.source.commit(app("web-1"))
    agent = device.started()
    device.run(agent, 5)  # failed at 0; due at 10

    device.source.commit({**app("web-1"), **app("web-2")})
    agent.tick(poll_now=True)

    assert len(device.backend.calls_of("apply", "web-1")) == 1
    assert len(device.backend.calls_of("apply", "web-2")) == 1


# --- polls ----------------------------------------------------------------------------------


def test_polls_come_every_interval(device):
    device.source.commit(app())
    agent = device.started()
    start = device.clock.wall()
    device.run(agent, 185)
    assert [(t - start).total_seconds() for t in device.source.polls] == [0, 60, 120, 180]


def test_poll_errors_back_off_until_the_server_answers(tmp_path):
    device = Device(settings(tmp_path, poll={"interval": "60s", "max_backoff": "15m"}))
    device.source.commit(app())
    unreachable = GitTransientError("connection refused", code="GIT_UNREACHABLE")
    device.source.fail_next(unreachable, unreachable, unreachable, unreachable)
    agent = device.started()
    start = device.clock.wall()

    device.run(agent, 1900)

    polls = [(t - start).total_seconds() for t in device.source.polls]
    # 120, 240, 480, then the cap of 900; then the interval again
    assert polls[:7] == [0, 120, 360, 840, 1740, 1800, 1860]
    assert device.sender.states("web-1")[-1] == "Installed"
    status = device.runtime.json("poll.json")
    assert status["last_poll_result"] == "unchanged"


def test_no_poll_outside_the_polling_hours(tmp_path):
    device = Device(settings(tmp_path, poll={"hours": ["06:00-22:00"]}))
    device.clock.advance_to(dt.datetime(2026, 11, 25, 21, 58))
    device.source.commit(app())
    agent = device.started()

    device.run(agent, 8.5 * 3600)

    night = [t for t in device.source.polls if not (6 <= t.hour < 22)]
    assert night == []
    times = [t.strftime("%H:%M") for t in device.source.polls]
    assert times[:3] == ["21:58", "21:59", "06:00"]
    assert device.runtime.json("poll.json")["last_poll_result"] == "unchanged"


def _inside_downtime(t: dt.datetime) -> bool:
    return dt.time(12, 30) <= t.time() < dt.time(13, 0)


def _failed_restore_in_downtime(tmp_path) -> tuple[Device, object, int]:
    """Installed at 12:00; at 12:35, inside the downtime 12:30-13:00, the application dies
    and restoring it fails once. Runs to 12:59."""
    device = Device(settings(tmp_path, poll={"downtime": ["12:30-13:00"]}))
    device.source.commit(app())
    agent = device.started()
    device.run(agent, 35 * 60)
    reports = len(device.sender.delivered)
    assert device.sender.states("web-1")[-1] == "Installed"
    device.backend.stop("web-1")
    device.backend.script("apply", "web-1", EngineError("port taken", code="PORT_IN_USE"))
    device.run(agent, 24 * 60)
    return device, agent, reports


def test_a_downtime_holds_polls_and_reports_until_it_ends(tmp_path):
    device, agent, reports = _failed_restore_in_downtime(tmp_path)

    assert not any(_inside_downtime(t) for t in device.source.polls)
    assert len(device.sender.delivered) == reports  # the Failed report waits
    assert device.queued()[0][1]["status"]["state"] == "Failed"

    device.run(agent, 5 * 60)  # past 13:00
    assert device.clock.wall().time() >= dt.time(13, 0)
    assert device.sender.states("web-1")[-3:] == ["Failed", "Installing", "Installed"]
    assert not any(_inside_downtime(t) for t in device.source.polls)
    assert ("web-1", "web") not in device.backend.stopped
    assert device.queued() == []


def test_a_downtime_holds_retries_until_it_ends(tmp_path):
    device, _, _ = _failed_restore_in_downtime(tmp_path)
    # the install, then self-heal's try; the retry waits for the downtime's end
    assert len(device.backend.calls_of("apply")) == 2


def test_poll_now_polls_at_once_whatever_the_schedule(device):
    device.source.commit(app())
    agent = device.started()
    agent.tick()
    agent.tick(poll_now=True)
    agent.tick()
    assert len(device.source.polls) == 2


# --- self-heal ------------------------------------------------------------------------------


def test_self_heal_looks_every_observe_interval(device):
    device.source.commit(app())
    agent = device.started()
    start = device.clock.monotonic()
    device.run(agent, 100)
    looks = _since(start, [c.at for c in device.backend.calls_of("health")])
    assert looks == [0, 30, 60, 90]


def test_a_component_that_stops_is_restored_at_the_next_look(device):
    device.source.commit(app())
    agent = device.started()
    device.run(agent, 40)
    device.backend.stop("web-1")
    stopped_at = device.clock.monotonic()
    device.run(agent, 30)
    restored = [c.at for c in device.backend.calls_of("apply")][-1]
    assert _since(stopped_at, [restored]) == [20]  # at 60, the next look
    assert ("web-1", "web") not in device.backend.stopped


# --- reports and capabilities ---------------------------------------------------------------


def test_reports_wait_for_the_wos_and_arrive_in_order(device):
    device.sender.down = True
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = device.started()
    device.run(agent, 600)
    assert device.sender.delivered == []
    tried = device.sender.attempts
    assert tried <= 10  # backing off (2 s doubling): not at each of the loop's 21 ticks

    device.sender.down = False
    device.run(agent, 300)  # the outbox's backoff is capped at 300 s

    assert device.sender.states("web-1") == ["Pending", "Installing", "Installed"]
    assert device.sender.states("web-2") == ["Pending", "Installing", "Installed"]
    assert device.queued() == []


def test_a_rejected_report_does_not_hold_back_the_others(device):
    device.sender.rejecting.add("web-1")
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = device.started()
    device.run(agent, 10)
    assert device.sender.states("web-2") == ["Pending", "Installing", "Installed"]
    assert device.sender.states("web-1") == []


def test_capabilities_are_sent_once_the_wos_answers(device):
    device.sender.down = True
    device.source.commit(app())
    agent = device.started()
    device.run(agent, 100)
    assert device.sender.capabilities == []

    device.sender.down = False
    device.run(agent, 300)

    assert len(device.sender.capabilities) == 1  # once a process: not at every tick
    body = device.sender.capabilities[0]
    assert body["properties"]["id"] == "gw-twin"


def test_the_loop_wakes_for_a_capabilities_retry_and_for_held_reports(device):
    # The WOS is away at start, back a second later: the retries come when their backoffs
    # say (reports 2 s, capabilities 10 s), not at the next heal look (30 s) or poll (60 s).
    device.sender.down = True
    device.source.commit(app())
    agent = device.started()
    start = device.clock.monotonic()
    device.run(agent, 1)
    device.sender.down = False
    device.run(agent, 20)

    assert device.sender.states("web-1") == ["Pending", "Installing", "Installed"]
    assert max(_since(start, device.sender.delivered_at)) < 5
    assert _since(start, device.sender.capabilities_at) == [10]
