"""Self-heal and orphan sweeps, in-process on twins (see test_reconciler.py): what stopped
is restored from what was recorded, offline, and unreported when it works; what no record
accounts for is removed after a start or a change, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite.backends import ComponentHealth, ServiceHealth
from margo_lite.errors import EngineError, EngineTransientError
from tests.support.rig import APP
from tests.support.twindevice import WEB, Device, app, settings


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(settings(tmp_path))


# --- orphan sweeps --------------------------------------------------------------------------


def test_leftovers_no_record_accounts_for_are_removed_after_a_start(device):
    device.source.commit(app())
    device.backend.leftovers |= {("old-1", "web"), ("old-2", "db")}
    agent = device.started()
    agent.once()

    removed = sorted((c.deployment_id, c.component) for c in device.backend.calls_of("remove"))
    assert removed == [("old-1", "web"), ("old-2", "db")]
    assert ("web-1", "web") in device.backend.running
    assert device.sender.states("old-1") == []  # nothing recorded, nothing to report

    agent.once()  # an idle cycle does not ask the engine again
    assert len(device.backend.calls_of("managed")) == 1


def test_a_sweep_the_engine_could_not_answer_is_tried_again(device):
    device.source.commit(app())
    device.backend.script(
        "managed", "", EngineTransientError("no engine", code="ENGINE_UNAVAILABLE")
    )
    device.backend.leftovers.add(("old-1", "web"))
    agent = device.started()
    agent.once()
    assert device.backend.calls_of("remove") == []

    agent.reconcile()  # nothing changed, but the sweep is still owed
    assert [c.deployment_id for c in device.backend.calls_of("remove")] == ["old-1"]
    agent.reconcile()
    assert len(device.backend.calls_of("managed")) == 2


def test_a_leftover_that_cannot_be_removed_does_not_stop_the_others(device):
    device.source.commit(app())
    device.backend.leftovers |= {("old-1", "web"), ("old-2", "web")}
    device.backend.script("remove", "old-1", EngineError("busy", code="ENGINE_FAILED"))
    device.started().once()

    assert [c.deployment_id for c in device.backend.calls_of("remove")] == ["old-1", "old-2"]
    assert device.backend.leftovers == {("old-1", "web")}
    assert device.sender.last("web-1")["state"] == "Installed"


def test_unused_packages_leave_the_cache(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    first = device.record("web-1")["components"][0]["data"]["package"]
    pkgs = device.packages_dir / "pkgs"
    assert (pkgs / first.removeprefix("sha256:")).is_dir()

    device.source.commit({**app(), "apps/web/compose.yaml": APP.format(image="example.com/web:2")})
    agent.once()
    second = device.record("web-1")["components"][0]["data"]["package"]
    assert second != first
    assert [p.name for p in pkgs.iterdir()] == [second.removeprefix("sha256:")]


# --- self-heal ------------------------------------------------------------------------------


def test_a_stopped_component_is_restored_without_a_report(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    reports = len(device.sender.delivered)
    installed = device.backend.running[("web-1", "web")]

    device.backend.stop("web-1")
    agent.heal()

    assert ("web-1", "web") not in device.backend.stopped
    assert device.backend.calls_of("apply")[-1].digest == installed.digest  # as recorded
    assert len(device.sender.delivered) == reports
    assert device.record("web-1")["state"] == "Installed"


def test_a_component_being_removed_is_restored_once_it_is_gone(device):
    """An operator's `podman rm -f` under way shows the container "stopping": restoring then
    races the removal for the port, so the heal waits for its end, then restores quietly."""
    device.source.commit(app())
    agent = device.started()
    agent.once()
    reports = len(device.sender.delivered)
    real_health = device.backend.health
    device.backend.health = lambda dep, comp: ComponentHealth({"web": ServiceHealth("stopping")})

    agent.heal()
    assert len(device.backend.calls_of("apply")) == 1  # nothing done while it settles

    device.backend.health = real_health
    device.backend.stop("web-1")
    agent.heal()
    assert len(device.backend.calls_of("apply")) == 2
    assert len(device.sender.delivered) == reports  # the WOS was not alarmed
    assert device.record("web-1")["state"] == "Installed"


def test_a_healthy_component_is_left_alone(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    agent.heal()
    assert len(device.backend.calls_of("apply")) == 1
    assert len(device.backend.calls_of("health")) == 1


def test_a_restore_that_fails_is_reported_and_retried(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    device.backend.stop("web-1")
    device.backend.script("apply", "web-1", EngineError("port taken", code="PORT_IN_USE"))

    agent.heal()
    agent.report()

    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "CONTAINER_DOWN")
    assert "web: exited (exit code 137)" in last["error"]["message"]
    assert "port taken" in last["error"]["message"]

    device.run(agent, 60)  # retried through reconcile, which reports Installed again
    assert device.sender.states("web-1")[-2:] == ["Installing", "Installed"]
    assert ("web-1", "web") not in device.backend.stopped


def test_a_tampered_package_is_not_restored(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    package = device.record("web-1")["components"][0]["data"]["package"]
    folder = device.packages_dir / "pkgs" / package.removeprefix("sha256:")
    (folder / "compose.yaml").write_text(WEB.replace("web:1", "evil:1"))
    device.backend.stop("web-1")

    agent.heal()
    agent.report()

    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "PACKAGE_TAMPERED")
    assert len(device.backend.calls_of("apply")) == 1  # never restarted from that folder


def test_a_component_the_engine_cannot_observe_is_left_alone(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    device.backend.stop("web-1")
    device.backend.script("health", "web-1", EngineTransientError("no", code="ENGINE_UNAVAILABLE"))

    agent.heal()

    assert len(device.backend.calls_of("apply")) == 1
    assert device.record("web-1")["state"] == "Installed"
    agent.heal()  # the engine answers again: restored
    assert len(device.backend.calls_of("apply")) == 2


def test_a_component_recorded_by_an_older_version_is_restored_from_its_package(device):
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    agent.once()
    device.backend.stop("web-1")
    device.backend.unrecorded.add(("web-1", "web"))

    agent.heal()

    assert len(device.backend.calls_of("apply")) == 2
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.sender.states("web-1")[-1] == "Installed"


def test_a_component_that_is_no_longer_desired_is_not_healed(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = device.started()
    agent.once()
    device.backend.stop("web-1")
    device.source.commit(app("web-2"))
    agent.observe(force=True)  # web-1 is no longer desired; not yet removed

    agent.heal()

    assert [c.deployment_id for c in device.backend.calls_of("health")] == ["web-2"]


def test_a_component_recorded_without_its_package_is_reported_down(device):
    """A record from before packages were recorded: nothing to restore from offline."""
    device.source.commit(app())
    device.started().once()
    record = device.record("web-1")
    record["components"][0]["data"] = {}
    device.store.write_json("deployments/web-1.json", record)
    agent = device.started()
    device.backend.stop("web-1")

    agent.heal()
    agent.report()

    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "CONTAINER_DOWN")
    assert "no package is recorded" in last["error"]["message"]
