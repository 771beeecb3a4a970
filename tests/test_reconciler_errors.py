"""Error boundaries of the reconciler, in-process on twins (see test_reconciler.py): a
surprise in one deployment fails that deployment alone with INTERNAL_ERROR; a problem of the
device itself (a full disk) goes up to the loop; a surprise with the whole desired state
keeps what runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite import desired, planner
from margo_lite.errors import (
    ComposeError,
    EngineError,
    EngineTransientError,
    PolicyError,
    StateError,
)
from tests.support.twindevice import Device, app, settings


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(settings(tmp_path))


# --- the per-deployment error boundary ------------------------------------------------------


@pytest.mark.parametrize("point", ["prepare", "apply", "heal"])
def test_a_surprise_fails_that_deployment_alone(device, point):
    device.source.commit({**app("good-1"), **app("bad-1")})
    agent = device.started(raise_at=f"{point}:bad-1")
    agent.once()
    if point == "heal":
        device.backend.stop("bad-1")
        device.backend.stop("good-1")
        agent.heal()
        agent.report()

    last = device.sender.last("bad-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "INTERNAL_ERROR")
    assert "RuntimeError: test hook" in last["error"]["message"]
    assert device.sender.last("good-1")["state"] == "Installed"
    assert ("good-1", "web") in device.backend.running
    assert ("good-1", "web") not in device.backend.stopped


def test_an_exception_no_code_was_written_for_is_internal_error(device):
    device.backend.faults[("apply", "bad-1")] = TypeError("unhashable type: 'dict'")
    device.source.commit({**app("good-1"), **app("bad-1")})
    result = device.started().once()

    assert result.failed == ("bad-1",)
    last = device.sender.last("bad-1")
    assert last["error"]["code"] == "INTERNAL_ERROR"
    assert last["error"]["message"] == "web: unexpected error: TypeError: unhashable type: 'dict'"
    assert device.sender.last("good-1")["state"] == "Installed"


def test_a_full_disk_during_a_step_is_local_io_error(device):
    device.backend.faults[("apply", "web-1")] = OSError(28, "No space left on device")
    device.source.commit(app())
    device.started().once()

    last = device.sender.last("web-1")
    assert (last["error"]["code"], last["error"]["message"]) == (
        "LOCAL_IO_ERROR",
        "web: No space left on device",
    )


def test_a_surprise_outside_a_step_fails_that_deployment_alone(device):
    """Building the Installed report of bad-1 raises (after its step): the deployment
    boundary marks it Failed, and good-1 goes on."""
    device.source.commit({**app("bad-1"), **app("good-1")})
    agent = device.started()
    outbox = agent.parts.outbox
    add = outbox.add

    def add_or_raise(deployment_id, body, **kw):
        if deployment_id == "bad-1" and body["status"]["state"] == "Installed":
            raise TypeError("Object of type date is not JSON serializable")
        add(deployment_id, body, **kw)

    outbox.add = add_or_raise
    agent.once()

    last = device.sender.last("bad-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "INTERNAL_ERROR")
    assert device.sender.last("good-1")["state"] == "Installed"


# --- the device itself fails ----------------------------------------------------------------


def test_a_full_disk_stops_the_pass_and_the_next_one_goes_on(device):
    """A record that cannot be written is the device's problem, not a deployment's: it
    goes up to the loop (which logs it and ticks again), and nothing is reported that was
    not queued."""
    device.source.commit(app())
    agent = device.started()
    device.store.fail_on(
        lambda w: w.name == "deployments/web-1.json" and w.value["state"] == "Installed",
        StateError("cannot write deployments/web-1.json: No space left on device"),
    )
    with pytest.raises(StateError):
        agent.once()
    assert device.record("web-1")["state"] == "Installing"

    assert agent.once().converged  # space again: the install is recorded
    assert device.record("web-1")["state"] == "Installed"
    assert device.sender.last("web-1")["state"] == "Installed"


def test_a_poll_status_that_cannot_be_written_does_not_stop_the_poll(device):
    device.source.commit(app())
    device.runtime.fail_on(lambda w: True, StateError("read-only file system"))
    assert device.started().once().converged


def test_a_failure_that_cannot_even_be_recorded_is_logged(device, caplog):
    """bad-1's reports cannot be built at all: its failure goes to the log, and good-1 is
    still installed."""
    device.source.commit({**app("bad-1"), **app("good-1")})
    agent = device.started()
    add = agent.parts.outbox.add

    def add_or_raise(deployment_id, body, **kw):
        if deployment_id == "bad-1" and body["status"]["state"] in ("Installed", "Failed"):
            raise TypeError("Object of type date is not JSON serializable")
        add(deployment_id, body, **kw)

    agent.parts.outbox.add = add_or_raise
    agent.once()

    assert "bad-1: its failure cannot be recorded" in caplog.text
    assert device.sender.last("good-1")["state"] == "Installed"


@pytest.mark.parametrize("where", ["reading", "planning"])
def test_a_surprise_with_the_whole_desired_state_keeps_what_runs(device, monkeypatch, where):
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    agent.once()
    device.source.commit(app(greeting="bonjour"))
    target = (desired, "parse_files")
    if where == "planning":
        target = (planner, "plan")

    def surprise(*args, **kwargs):
        raise AttributeError("'int' object has no attribute 'lower'")

    with monkeypatch.context() as patch:
        patch.setattr(*target, surprise)
        result = agent.once()
    if where == "reading":
        assert "INTERNAL_ERROR" in result.poll_error
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.sender.states("web-1")[-1] == "Installed"

    agent.once()  # the surprise is gone
    assert device.env("web-1")["GREETING"] == "bonjour"


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (EngineTransientError("cannot connect", code="ENGINE_UNAVAILABLE"), "ENGINE_UNAVAILABLE"),
        (EngineError("exit status 125", code="ENGINE_FAILED"), "ENGINE_FAILED"),
        (ComposeError("unsupported key 'build'"), "COMPOSE_INVALID"),
        (PolicyError("privileged mode"), "POLICY_DENIED"),
        (StateError("cannot write backends/x.json", code="STATE_IO"), "STATE_IO"),
        (OSError(30, "Read-only file system"), "LOCAL_IO_ERROR"),
        (ValueError("surprise"), "INTERNAL_ERROR"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_each_family_of_error_from_the_engine_is_reported_with_its_code(device, raised, code):
    device.backend.script("apply", "web-1", raised)
    device.source.commit({**app("web-1"), **app("web-2")})
    result = device.started().once()

    assert result.failed == ("web-1",)
    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", code)
    assert device.record("web-1")["error"]["code"] == code
    assert device.sender.last("web-2")["state"] == "Installed"
