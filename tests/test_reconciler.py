"""The reconciler in-process, on twins (tests/support/twins.py): each step transition of a
deployment, and what a start, a stop and `once()` do. What is checked is what a user sees:
the reports the WOS receives, the records `margo-lite status` reads, and what the engine was
asked to do.

The real parts (podman, docker, C git, the WOS over HTTP) are in the e2e tests; these run in
milliseconds, so every branch of the reconciler can have its own test. Self-heal and orphan
sweeps are in test_reconciler_heal.py, error boundaries in test_reconciler_errors.py, crash
points in test_reconciler_crash.py, clocks in test_reconciler_timers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite.errors import EngineError, GitError, GitTransientError, StateCorruptError
from tests.support.rig import APP
from tests.support.twindevice import WEB, Device, app, settings, two_components


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(settings(tmp_path))


# --- step transitions -----------------------------------------------------------------------


def test_a_new_deployment_is_installed_and_reported(device):
    device.source.commit(app())
    result = device.started().once()

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
    agent = device.started()
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
    agent = device.started()
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
    agent = device.started()
    agent.once()

    device.source.commit({**app(), "apps/web/compose.yaml": APP.format(image="example.com/web:2")})
    agent.once()

    unit = device.backend.running[("web-1", "web")]
    assert unit.document["services"]["web"]["image"] == "example.com/web:2"
    assert device.sender.states("web-1")[-1] == "Installed"


def test_a_deployment_gone_from_the_repository_is_removed(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = device.started()
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
    agent = device.started()
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
    agent = device.started()
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
    result = device.started().once()

    assert not result.converged and result.failed == ("web-1",)
    last = device.sender.last("web-1")
    assert (last["state"], last["error"]["code"]) == ("Failed", "HEALTHCHECK_FAILED")
    assert "exited with code 1" in last["error"]["message"]
    assert device.record("web-1")["state"] == "Failed"
    assert device.backend.running == {}


def test_a_failed_component_holds_back_the_later_ones(device):
    device.backend.script("apply", "stack-1", EngineError("no", code="IMAGE_MISSING"))
    device.source.commit(two_components())
    agent = device.started()
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
    agent = device.started()
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
    result = device.started().once()

    assert result.failed == ("bad-1",)
    assert device.sender.last("bad-1")["state"] == "Failed"
    assert device.sender.last("web-1")["state"] == "Installed"
    assert device.backend.calls_of("apply", "bad-1") == []


def test_an_unreadable_document_holds_removals_and_sweeps(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    agent = device.started()
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


# --- start, stop, once ----------------------------------------------------------------------


def test_a_corrupt_record_stops_the_agent_at_start(device):
    device.source.commit(app())
    device.started().once()
    device.store.corrupt("deployments/web-1.json")

    with pytest.raises(StateCorruptError):
        device.agent().start()
    assert device.backend.calls_of("remove") == []


def test_a_restart_reads_the_records_and_changes_nothing(device):
    device.source.commit(app())
    device.started().once()
    calls, reports = len(device.backend.calls), len(device.sender.delivered)

    again = device.started()
    assert again.records["web-1"].state.value == "Installed"
    assert again.once().converged
    assert [c.method for c in device.backend.calls[calls:]] == ["managed"]  # the start's sweep
    assert len(device.sender.delivered) == reports


def test_a_held_revision_that_is_refused_at_start_applies_nothing(device):
    revision = device.source.commit(app())
    device.source.held = revision
    device.source.refuse(revision, GitError("not signed", code="GIT_SIGNATURE_INVALID"))

    agent = device.started()
    agent.reconcile()

    assert device.backend.calls == []
    assert device.store.names("deployments") == []
    assert device.sender.delivered == []


def test_once_reports_a_poll_error_and_keeps_what_runs(device):
    device.source.commit(app())
    agent = device.started()
    agent.once()
    device.source.fail_next(GitTransientError("connection refused", code="GIT_UNREACHABLE"))

    result = agent.once()

    assert not result.converged
    assert "GIT_UNREACHABLE" in result.poll_error
    assert ("web-1", "web") in device.backend.running


def test_once_reports_a_refused_revision_and_keeps_the_last_one(device):
    device.source.commit(app(greeting="hello"))
    agent = device.started()
    agent.once()
    bad = device.source.commit(app(greeting="evil"))
    device.source.refuse(bad, GitError("bad signature", code="GIT_SIGNATURE_INVALID"))

    result = agent.once()

    assert "GIT_SIGNATURE_INVALID" in result.poll_error
    assert device.env("web-1")["GREETING"] == "hello"
    assert device.store.json("agent.json")["commit"] != bad


def test_once_before_any_revision_exists(device):
    result = device.started().once()
    assert not result.converged
    assert "GIT_BRANCH_MISSING" in result.poll_error
    assert device.backend.calls == []


def test_a_stop_request_ends_the_pass_between_deployments(device):
    device.source.commit({**app("web-1"), **app("web-2")})
    asked = []
    agent = device.started(should_stop=lambda: bool(asked))
    original = device.backend.apply

    def apply_then_ask_to_stop(unit):
        original(unit)
        asked.append(True)

    device.backend.apply = apply_then_ask_to_stop
    agent.once()
    assert sorted(device.backend.running) == [("web-1", "web")]
    assert device.record("web-1")["state"] == "Installed"

    device.backend.apply = original  # the next start finishes the work
    assert device.started().once().converged
    assert sorted(device.backend.running) == [("web-1", "web"), ("web-2", "web")]


def test_stop_closes_the_wos_client(device):
    agent = device.started()
    agent.stop()
    assert device.sender.closed


def test_the_heartbeat_is_fed_during_a_pass(device):
    beats = []
    device.source.commit({**app("web-1"), **app("web-2")})
    device.started(heartbeat=lambda: beats.append(1)).once()
    assert len(beats) >= 2


def test_a_stop_request_ends_the_pass_between_components(device):
    device.source.commit(two_components())
    asked = []
    agent = device.started(should_stop=lambda: bool(asked))
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
    assert device.started().once().converged
    assert sorted(device.backend.running) == [("stack-1", "db"), ("stack-1", "web")]
