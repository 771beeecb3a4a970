"""The error's family decides when a failed component is tried again, in-process on twins
(see test_reconciler.py): a stalled failure (a compose file or a package that breaks the
rules, a refused policy) waits for a new revision that changes the deployment, or for a
restart; a transient one (the engine away, a port taken) is retried on the backoff, 10 s
doubling up to `poll.max_backoff`. The Git poll backs off the same way by family.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from margo_lite.errors import ComposeError, EngineError, EngineTransientError, GitError
from tests.support.twindevice import WEB, Device, app, settings

HOUR = 3600.0

#: Until errors decide scheduling (the StalledError family, issue 15), every failure is
#: retried on the backoff and the poll doubles from `poll.interval` whatever the error.


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(settings(tmp_path, poll={"max_backoff": "60s"}))


def _applies(device: Device, deployment_id: str = "web-1") -> list[float]:
    return [c.at for c in device.backend.calls_of("apply", deployment_id)]


def test_a_stalled_failure_is_not_retried_until_a_new_revision_changes_it(device):
    device.backend.script(
        "apply", "web-1", ComposeError("service web: unsupported key 'build'"), None
    )
    device.source.commit(app(greeting="hello"))
    agent = device.started()

    device.run(agent, HOUR)
    assert len(_applies(device)) == 1
    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "COMPOSE_INVALID")
    assert device.sender.states("web-1").count("Failed") == 1

    device.source.commit({**app("web-1", greeting="hello"), **app("web-2")})
    device.run(agent, HOUR)  # a revision that leaves web-1 as it was: still waiting
    assert len(_applies(device)) == 1
    assert device.sender.last("web-2")["state"] == "Installed"

    device.source.commit({**app("web-1", greeting="fixed"), **app("web-2")})
    agent.tick(poll_now=True)  # web-1 changed: tried at once
    assert len(_applies(device)) == 2
    assert device.sender.last("web-1")["state"] == "Installed"


def test_a_transient_failure_is_retried_on_the_backoff(device):
    away = EngineTransientError("cannot connect to the engine", code="ENGINE_UNAVAILABLE")
    device.backend.script("apply", "web-1", away, away, away, None)
    device.source.commit(app())
    agent = device.started()
    start = device.clock.monotonic()

    device.run(agent, 200)

    assert [t - start for t in _applies(device)] == [0, 10, 30, 70]
    assert device.sender.states("web-1")[-1] == "Installed"


def test_a_policy_refusal_is_not_retried(device, caplog):
    privileged = WEB.replace("    stop_grace_period", "    privileged: true\n    stop_grace_period")
    device.source.commit({**app(), "apps/web/compose.yaml": privileged})
    caplog.set_level(logging.ERROR, logger="margo_lite")
    agent = device.started()

    device.run(agent, HOUR)

    assert device.backend.calls_of("apply") == []
    assert device.sender.last("web-1")["error"]["code"] == "POLICY_DENIED"
    refusals = [r for r in caplog.records if "POLICY_DENIED" in r.getMessage()]
    assert len(refusals) == 1  # one error in the log, not one a minute


def test_a_rollback_caused_by_a_stalled_error_waits_like_its_cause(device):
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    agent.once()
    cause = ComposeError("service web: unsupported key 'build'")
    rolled_back = EngineError("update failed; previous version restored", code="ROLLED_BACK")
    rolled_back.__cause__ = cause
    device.backend.script("apply", "web-1", rolled_back)

    device.source.commit(app(greeting="bonjour"))
    device.run(agent, HOUR)

    assert len(_applies(device)) == 2  # the install, the update; no retry
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.sender.last("web-1")["error"]["code"] == "ROLLED_BACK"


def test_a_restart_tries_a_stalled_component_once_more(device):
    device.backend.faults[("apply", "web-1")] = ComposeError("unsupported key 'build'")
    device.source.commit(app())
    device.run(device.started(), HOUR)
    assert len(_applies(device)) == 1

    del device.backend.faults[("apply", "web-1")]  # e.g. a newer engine that supports it
    restarted = device.started()
    device.run(restarted, 60)
    assert len(_applies(device)) == 2
    assert device.sender.last("web-1")["state"] == "Installed"


def test_a_stalled_poll_error_backs_off_to_the_cap_at_once(tmp_path):
    device = Device(settings(tmp_path, poll={"interval": "60s", "max_backoff": "15m"}))
    refused = GitError("HTTP 401", code="GIT_AUTH_FAILED")
    device.source.fail_next(refused, refused)
    device.source.commit(app())
    agent = device.started()
    start = device.clock.wall()

    device.run(agent, 1900)

    polls = [(t - start).total_seconds() for t in device.source.polls]
    assert polls[:4] == [0, 900, 1800, 1860]  # the cap, not a doubling from 60 s
    assert device.sender.states("web-1")[-1] == "Installed"
