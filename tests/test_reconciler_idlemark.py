"""A restart whose held revision is applied with nothing to do reaches its idle loop
without reading the revision (the idle mark); anything the plan depends on that moved,
or a component to restore, reads it before any action."""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite import idlemark, valueclass
from margo_lite.errors import EngineTransientError
from tests.support.twindevice import Device, app, settings


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device(settings(tmp_path))
    dev.source.commit(app())
    assert dev.started().once().converged
    dev.source.reads.clear()
    return dev


def test_a_restart_with_nothing_to_do_does_not_read_the_revision(device):
    applies = len(device.backend.calls_of("apply"))
    agent = device.started()
    device.run(agent, 120)  # polls and health checks, nothing to do

    assert device.source.reads == []
    assert agent.desired is None
    assert len(device.backend.calls_of("health", "web-1")) >= 2  # still watched
    assert len(device.backend.calls_of("apply")) == applies
    assert device.runtime.json("poll.json")["revision_held"] == device.source.tip


def test_a_new_revision_after_such_a_restart_is_read_and_applied(device):
    agent = device.started()
    device.run(agent, 10)
    device.source.commit(app(greeting="bonjour"))
    assert agent.once().converged

    assert device.source.reads == [device.source.tip]
    assert device.env("web-1")["GREETING"] == "bonjour"


def test_a_changed_configuration_reads_the_revision(device):
    device.cfg = valueclass.replace(
        device.cfg, poll=valueclass.replace(device.cfg.poll, interval=120.0)
    )
    device.started()

    assert device.source.reads == [device.source.tip]


def test_another_margo_lite_version_reads_the_revision(device, monkeypatch):
    monkeypatch.setattr(idlemark, "__version__", "99.0.0")  # an upgrade may plan otherwise
    device.started()

    assert device.source.reads == [device.source.tip]


def test_a_changed_record_reads_the_revision(device):
    record = device.record("web-1")
    device.store.write_json("deployments/web-1.json", {**record, "state": "Installing"})
    agent = device.started()
    agent.once()

    assert device.source.reads == [device.source.tip]
    assert device.record("web-1")["state"] == "Installed"


def test_a_stopped_component_reads_the_revision_and_is_restored(device):
    agent = device.started()
    device.backend.stopped.add(("web-1", "web"))
    device.run(agent, 40)

    assert device.source.reads == [device.source.tip]
    assert ("web-1", "web") not in device.backend.stopped
    assert device.record("web-1")["state"] == "Installed"


def test_a_corrupt_idle_mark_reads_the_revision(device):
    device.store.write_bytes("idle.json", b"{not json")
    agent = device.started()

    assert device.source.reads == [device.source.tip]
    assert agent.desired is not None


def test_an_engine_that_cannot_answer_a_health_check_leaves_the_revision_unread(device):
    agent = device.started()
    device.backend.script(
        "health", "web-1", EngineTransientError("no engine", code="ENGINE_UNAVAILABLE")
    )
    device.run(agent, 40)

    assert device.source.reads == []  # nothing is known to be wrong: nothing to restore
    assert device.record("web-1")["state"] == "Installed"


def test_a_record_that_moves_while_idle_reads_the_revision_first(device):
    agent = device.started()
    device.run(agent, 10)
    agent.ctx.book.generation += 1  # a record saved by another step since the start

    agent.reconcile()

    assert device.source.reads == [device.source.tip]
    assert agent.desired is not None
