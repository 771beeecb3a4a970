"""The reconciler in-process, on twins (tests/support/twins.py): each step transition of a
deployment, self-heal, orphan sweeps, the per-deployment error boundary and what `once()`
returns. What is checked is what a user sees: the reports the WOS receives, the records
`margo-lite status` reads, and what the engine was asked to do.

The real parts (podman, docker, C git, the WOS over HTTP) are in the e2e tests; these run in
milliseconds, so every branch of the reconciler can have its own test. The crash points are
in test_reconciler_crash.py, the clocks in test_reconciler_timers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from margo_lite import agent as agent_module
from margo_lite.errors import (
    EngineError,
    EngineTransientError,
    GitError,
    StateCorruptError,
    StateError,
)
from tests.support.rig import APP, deployment
from tests.support.twins import Device, settings

WEB = APP.format(image="example.com/web:1")
DB = "services:\n  db:\n    image: example.com/db:1\n"


def app(dep_id: str = "web-1", *, greeting: str = "hello", **kwargs) -> dict[str, str]:
    """The files of one deployment of the web package (in the repository)."""
    return {
        "apps/web/compose.yaml": WEB,
        f"{dep_id}.yaml": deployment(dep_id, greeting=greeting, port=8080, **kwargs),
    }


def two_components(dep_id: str = "stack-1", *, greeting: str = "hello") -> dict[str, str]:
    """A deployment of two components, db before web, in listed order."""
    doc = yaml.safe_load(deployment(dep_id, greeting=greeting, port=8080))
    profile = doc["spec"]["deploymentProfile"]
    profile["components"].insert(0, {"name": "db", "properties": {"packageLocation": "apps/db"}})
    return {
        "apps/web/compose.yaml": WEB,
        "apps/db/compose.yaml": DB,
        f"{dep_id}.yaml": yaml.safe_dump(doc),
    }


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(settings(tmp_path))


def started(device: Device, **kwargs):
    agent = device.agent(**kwargs)
    agent.start()
    return agent


# --- step transitions -----------------------------------------------------------------------


def test_a_new_deployment_is_installed_and_reported(device):
    device.source.commit(app())
    result = started(device).once()

    assert result.converged and not result.failed and not result.pending
    assert device.sender.states("web-1") == ["Pending", "Installing", "Installed"]
    assert device.sender.reports("web-1")[0]["error"]["code"] == "POLICY_CHECK"
    assert device.record("web-1")["state"] == "Installed"
    assert [c.method for c in device.backend.calls_of("apply")] == ["apply"]
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.queued() == []
    assert device.store.json("agent.json") == {"commit": device.source.tip}
    assert len(device.sender.capabilities) == 1


def test_an_unchanged_revision_costs_no_engine_call_no_write_no_report(device):
    device.source.commit(app())
    agent = started(device)
    agent.once()
    calls, journal = len(device.backend.calls), len(device.store.journal)
    reports = len(device.sender.delivered)

    result = agent.once()
    agent.reconcile()

    assert result.converged
    assert len(device.backend.calls) == calls
    assert len(device.store.journal) == journal
    assert len(device.sender.delivered) == reports


def test_a_parameter_change_updates_the_running_component(device):
    device.source.commit(app(greeting="hello"))
    agent = started(device)
    agent.once()
    old = device.record("web-1")["components"][0]["digest"]

    device.source.commit(app(greeting="bonjour"))
    assert agent.once().converged

    assert device.env("web-1")["GREETING"] == "bonjour"
    assert device.sender.states("web-1")[-2:] == ["Installing", "Installed"]
    assert device.record("web-1")["components"][0]["digest"] != old
    assert len(device.backend.calls_of("apply")) == 2


def test_a_changed_package_updates_the_running_component(device):
    device.source.commit(app())
    agent = started(device)
    agent.once()

    device.source.commit({**app(), "apps/web/compose.yaml": APP.format(image="example.com/web:2")})
    agent.once()

    unit = device.backend.running[("web-1", "web")]
    assert unit.document["services"]["web"]["image"] == "example.com/web:2"
    assert device.sender.states("web-1")[-1] == "Installed"


def test_a_deployment_gone_from_the_repository_is_removed(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = started(device)
    agent.once()

    device.source.commit(app("web-2"))
    assert agent.once().converged

    assert device.sender.states("web-1")[-2:] == ["Removing", "Removed"]
    assert device.record("web-1") is None
    assert [(c.deployment_id, c.component) for c in device.backend.calls_of("remove")] == [
        ("web-1", "web")
    ]
    assert ("web-1", "web") not in device.backend.running
    assert ("web-2", "web") in device.backend.running


def test_an_update_the_backend_rolled_back_keeps_the_old_version_and_is_retried(device):
    device.source.commit(app(greeting="hello"))
    agent = started(device)
    agent.once()
    old = device.record("web-1")["components"][0]["digest"]
    device.backend.script(
        "apply",
        "web-1",
        EngineError("update failed and the previous version was restored", code="ROLLED_BACK"),
    )

    device.source.commit(app(greeting="bonjour"))
    result = agent.once()

    assert result.failed == ("web-1",)
    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "ROLLED_BACK")
    assert device.env("web-1")["GREETING"] == "hello"  # the old version still runs
    assert device.record("web-1")["components"][0]["digest"] == old

    device.run(agent, 60)  # the retry is due within a minute; the engine takes it now
    assert device.env("web-1")["GREETING"] == "bonjour"
    assert device.sender.states("web-1")[-2:] == ["Installing", "Installed"]


def test_an_update_the_policy_refuses_never_reaches_the_engine(device):
    device.source.commit(app())
    agent = started(device)
    agent.once()
    privileged = WEB.replace("    stop_grace_period", "    privileged: true\n    stop_grace_period")

    device.source.commit({**app(), "apps/web/compose.yaml": privileged})
    agent.once()

    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "POLICY_DENIED")
    assert len(device.backend.calls_of("apply")) == 1  # only the first install
    unit = device.backend.running[("web-1", "web")]
    assert "privileged" not in unit.document["services"]["web"]


def test_a_failed_install_leaves_nothing_running(device):
    device.backend.script(
        "apply", "web-1", EngineError("service web: exited with code 1", code="HEALTHCHECK_FAILED")
    )
    device.source.commit(app())
    result = started(device).once()

    assert not result.converged and result.failed == ("web-1",)
    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "HEALTHCHECK_FAILED")
    assert "exited with code 1" in last["error"]["message"]
    assert device.record("web-1")["state"] == "Failed"
    assert device.backend.running == {}


def test_a_failed_component_holds_back_the_later_ones(device):
    device.backend.script("apply", "stack-1", EngineError("no", code="IMAGE_MISSING"))
    device.source.commit(two_components())
    agent = started(device)
    agent.once()

    applied = [c.component for c in device.backend.calls_of("apply")]
    assert applied == ["db"]  # web waits for db, in listed order
    record = device.record("stack-1")
    assert record["state"] == "Failed"
    assert {c["name"]: c["state"] for c in record["components"]} == {
        "db": "Failed",
        "web": "Pending",
    }

    device.run(agent, 60)  # db's retry succeeds; web follows in the same pass
    assert [c.component for c in device.backend.calls_of("apply")] == ["db", "db", "web"]
    assert device.sender.last("stack-1")["state"] == "Installed"


def test_a_deployment_waits_for_the_one_it_depends_on(device):
    device.backend.script("apply", "base-1", EngineError("no", code="IMAGE_MISSING"))
    device.source.commit({**app("base-1"), **app("top-1", depends_on="base-1")})
    agent = started(device)
    result = agent.once()

    assert result.failed == ("base-1",) and result.pending == ("top-1",)
    last = device.sender.last("top-1")
    assert (last["state"], last["error"]["code"]) == ("Pending", "WAITING_FOR_DEPENDENCY")
    assert device.backend.calls_of("apply", "top-1") == []

    device.run(agent, 60)
    assert device.sender.last("base-1")["state"] == "Installed"
    assert device.sender.last("top-1")["state"] == "Installed"


def test_a_document_that_breaks_the_contract_fails_alone(device):
    broken = app("bad-1")["bad-1.yaml"].replace("docker-compose", "helm.v3")
    device.source.commit({**app("web-1"), "bad-1.yaml": broken})
    result = started(device).once()

    assert result.failed == ("bad-1",)
    assert device.sender.last("bad-1")["state"] == "Failed"
    assert device.sender.last("web-1")["state"] == "Installed"
    assert device.backend.calls_of("apply", "bad-1") == []


def test_an_unreadable_document_holds_removals_and_sweeps(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = started(device)
    agent.once()
    device.backend.leftovers.add(("old-1", "web"))

    device.source.commit({**app("web-2"), "junk.yaml": "a: [unclosed\n"})
    result = agent.once()

    assert not result.converged  # the desired state is incomplete
    assert device.backend.calls_of("remove") == []
    assert ("web-1", "web") in device.backend.running
    assert device.record("web-1")["state"] == "Installed"
    assert device.store.json("agent.json")["commit"] != device.source.tip

    device.source.commit(app("web-2"))  # readable again: now web-1 and the leftover go
    assert agent.once().converged
    removed = {(c.deployment_id, c.component) for c in device.backend.calls_of("remove")}
    assert removed == {("web-1", "web"), ("old-1", "web")}


# --- orphan sweeps --------------------------------------------------------------------------


def test_leftovers_no_record_accounts_for_are_removed_after_a_start(device):
    device.source.commit(app())
    device.backend.leftovers |= {("old-1", "web"), ("old-2", "db")}
    agent = started(device)
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
    agent = started(device)
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
    started(device).once()

    assert [c.deployment_id for c in device.backend.calls_of("remove")] == ["old-1", "old-2"]
    assert device.backend.leftovers == {("old-1", "web")}
    assert device.sender.last("web-1")["state"] == "Installed"


def test_unused_packages_leave_the_cache(device):
    device.source.commit(app())
    agent = started(device)
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
    agent = started(device)
    agent.once()
    reports = len(device.sender.delivered)
    installed = device.backend.running[("web-1", "web")]

    device.backend.stop("web-1")
    agent.heal()

    assert ("web-1", "web") not in device.backend.stopped
    assert device.backend.calls_of("apply")[-1].digest == installed.digest  # as recorded
    assert len(device.sender.delivered) == reports
    assert device.record("web-1")["state"] == "Installed"


def test_a_healthy_component_is_left_alone(device):
    device.source.commit(app())
    agent = started(device)
    agent.once()
    agent.heal()
    assert len(device.backend.calls_of("apply")) == 1
    assert len(device.backend.calls_of("observe")) == 1


def test_a_restore_that_fails_is_reported_and_retried(device):
    device.source.commit(app())
    agent = started(device)
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
    agent = started(device)
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
    agent = started(device)
    agent.once()
    device.backend.stop("web-1")
    device.backend.script("observe", "web-1", EngineTransientError("no", code="ENGINE_UNAVAILABLE"))

    agent.heal()

    assert len(device.backend.calls_of("apply")) == 1
    assert device.record("web-1")["state"] == "Installed"
    agent.heal()  # the engine answers again: restored
    assert len(device.backend.calls_of("apply")) == 2


def test_a_component_recorded_by_an_older_version_is_restored_from_its_package(device):
    device.source.commit(app(greeting="hello"))
    agent = started(device)
    agent.once()
    device.backend.stop("web-1")
    device.backend.unrecorded.add(("web-1", "web"))

    agent.heal()

    assert len(device.backend.calls_of("apply")) == 2
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.sender.states("web-1")[-1] == "Installed"


def test_a_component_that_is_no_longer_desired_is_not_healed(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = started(device)
    agent.once()
    device.backend.stop("web-1")
    device.source.commit(app("web-2"))
    agent.observe(force=True)  # web-1 is no longer desired; not yet removed

    agent.heal()

    assert [c.deployment_id for c in device.backend.calls_of("observe")] == ["web-2"]


# --- the per-deployment error boundary ------------------------------------------------------


@pytest.mark.parametrize("point", ["prepare", "apply", "heal"])
def test_a_surprise_fails_that_deployment_alone(device, point):
    device.source.commit({**app("good-1"), **app("bad-1")})
    agent = started(device, raise_at=f"{point}:bad-1")
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
    result = started(device).once()

    assert result.failed == ("bad-1",)
    last = device.sender.last("bad-1")
    assert last["error"]["code"] == "INTERNAL_ERROR"
    assert last["error"]["message"] == "web: unexpected error: TypeError: unhashable type: 'dict'"
    assert device.sender.last("good-1")["state"] == "Installed"


def test_a_full_disk_during_a_step_is_local_io_error(device):
    device.backend.faults[("apply", "web-1")] = OSError(28, "No space left on device")
    device.source.commit(app())
    started(device).once()

    last = device.sender.last("web-1")
    assert (last["error"]["code"], last["error"]["message"]) == (
        "LOCAL_IO_ERROR",
        "web: No space left on device",
    )


def test_a_surprise_outside_a_step_fails_that_deployment_alone(device):
    """Building the Installed report of bad-1 raises (after its step): the deployment
    boundary marks it Failed, and good-1 goes on."""
    device.source.commit({**app("bad-1"), **app("good-1")})
    agent = started(device)
    outbox = agent.parts.outbox
    add = outbox.add

    def add_or_raise(deployment_id, body):
        if deployment_id == "bad-1" and body["status"]["state"] == "Installed":
            raise TypeError("Object of type date is not JSON serializable")
        add(deployment_id, body)

    outbox.add = add_or_raise
    agent.once()

    last = device.sender.last("bad-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "INTERNAL_ERROR")
    assert device.sender.last("good-1")["state"] == "Installed"


# --- start, stop, once ----------------------------------------------------------------------


def test_a_corrupt_record_stops_the_agent_at_start(device):
    device.source.commit(app())
    started(device).once()
    device.store.corrupt("deployments/web-1.json")

    with pytest.raises(StateCorruptError):
        device.agent().start()
    assert device.backend.calls_of("remove") == []


def test_a_restart_reads_the_records_and_changes_nothing(device):
    device.source.commit(app())
    started(device).once()
    calls, reports = len(device.backend.calls), len(device.sender.delivered)

    again = started(device)
    assert again.records["web-1"].state.value == "Installed"
    assert again.once().converged
    assert [c.method for c in device.backend.calls[calls:]] == ["managed"]  # the start's sweep
    assert len(device.sender.delivered) == reports


def test_a_held_revision_that_is_refused_at_start_applies_nothing(device):
    revision = device.source.commit(app())
    device.source.held = revision
    device.source.refuse(revision, GitError("not signed", code="GIT_SIGNATURE_INVALID"))

    agent = started(device)
    agent.reconcile()

    assert device.backend.calls == []
    assert device.store.names("deployments") == []
    assert device.sender.delivered == []


def test_once_reports_a_poll_error_and_keeps_what_runs(device):
    device.source.commit(app())
    agent = started(device)
    agent.once()
    device.source.fail_next(GitError("connection refused", code="GIT_UNREACHABLE"))

    result = agent.once()

    assert not result.converged
    assert "GIT_UNREACHABLE" in result.poll_error
    assert ("web-1", "web") in device.backend.running


def test_once_reports_a_refused_revision_and_keeps_the_last_one(device):
    device.source.commit(app(greeting="hello"))
    agent = started(device)
    agent.once()
    bad = device.source.commit(app(greeting="evil"))
    device.source.refuse(bad, GitError("bad signature", code="GIT_SIGNATURE_INVALID"))

    result = agent.once()

    assert "GIT_SIGNATURE_INVALID" in result.poll_error
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.store.json("agent.json")["commit"] != bad


def test_once_before_any_revision_exists(device):
    result = started(device).once()
    assert not result.converged
    assert "GIT_BRANCH_MISSING" in result.poll_error
    assert device.backend.calls == []


def test_a_stop_request_ends_the_pass_between_deployments(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    asked = []
    agent = started(device, should_stop=lambda: bool(asked))
    original = device.backend.apply

    def apply_then_ask_to_stop(unit):
        original(unit)
        asked.append(True)

    device.backend.apply = apply_then_ask_to_stop
    agent.once()
    assert sorted(device.backend.running) == [("web-1", "web")]
    assert device.record("web-1")["state"] == "Installed"

    device.backend.apply = original  # the next start finishes the work
    assert started(device).once().converged
    assert sorted(device.backend.running) == [("web-1", "web"), ("web-2", "web")]


def test_stop_closes_the_wos_client(device):
    agent = started(device)
    agent.stop()
    assert device.sender.closed


def test_the_heartbeat_is_fed_during_a_pass(device):
    beats = []
    device.source.commit({**app("web-1"), **app("web-2")})
    started(device, heartbeat=lambda: beats.append(1)).once()
    assert len(beats) >= 2


def test_a_stop_request_ends_the_pass_between_components(device):
    device.source.commit(two_components())
    asked = []
    agent = started(device, should_stop=lambda: bool(asked))
    original = device.backend.apply

    def apply_then_ask_to_stop(unit):
        original(unit)
        asked.append(True)

    device.backend.apply = apply_then_ask_to_stop
    agent.once()
    assert sorted(device.backend.running) == [("stack-1", "db")]
    assert {c["name"]: c["state"] for c in device.record("stack-1")["components"]} == {
        "db": "Installed",
        "web": "Pending",
    }
    assert device.told("stack-1")[-1]["state"] == "Installing"

    device.backend.apply = original
    assert started(device).once().converged
    assert sorted(device.backend.running) == [("stack-1", "db"), ("stack-1", "web")]


# --- the device itself fails ----------------------------------------------------------------


def test_a_full_disk_stops_the_pass_and_the_next_one_goes_on(device):
    """A record that cannot be written is the device's problem, not a deployment's: it
    goes up to the loop (which logs it and ticks again), and nothing is reported that was
    not queued."""
    device.source.commit(app())
    agent = started(device)
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
    assert started(device).once().converged


def test_a_failure_that_cannot_even_be_recorded_is_logged(device, caplog):
    """bad-1's reports cannot be built at all: its failure goes to the log, and good-1 is
    still installed."""
    device.source.commit({**app("bad-1"), **app("good-1")})
    agent = started(device)
    add = agent.parts.outbox.add

    def add_or_raise(deployment_id, body):
        if deployment_id == "bad-1" and body["status"]["state"] in ("Installed", "Failed"):
            raise TypeError("Object of type date is not JSON serializable")
        add(deployment_id, body)

    agent.parts.outbox.add = add_or_raise
    agent.once()

    assert "bad-1: its failure cannot be recorded" in caplog.text
    assert device.sender.last("good-1")["state"] == "Installed"


@pytest.mark.parametrize("where", ["reading", "planning"])
def test_a_surprise_with_the_whole_desired_state_keeps_what_runs(device, monkeypatch, where):
    device.source.commit(app(greeting="hello"))
    agent = started(device)
    agent.once()
    device.source.commit(app(greeting="bonjour"))
    target = (agent_module.desired, "parse_files")
    if where == "planning":
        target = (agent_module.planner, "plan")

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


def test_a_component_recorded_without_its_package_is_reported_down(device):
    """A record from before packages were recorded: nothing to restore from offline."""
    device.source.commit(app())
    started(device).once()
    record = device.record("web-1")
    record["components"][0]["data"] = {}
    device.store.write_json("deployments/web-1.json", record)
    agent = started(device)
    device.backend.stop("web-1")

    agent.heal()
    agent.report()

    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "CONTAINER_DOWN")
    assert "no package is recorded" in last["error"]["message"]
