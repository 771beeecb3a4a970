"""The agent end to end on real parts: C git's http-backend, the WOS simulator, podman.

Each test drives `margo-lite run` or `margo-lite once` as a user would, then checks what a
user checks: the containers in the engine, what the app answers, and the statuses the WOS
received.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from tests.support.engines import IMAGE, free_port, http_get
from tests.support.gitserver import Fault
from tests.support.rig import APP, app_files, deployment, wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def test_install_parameter_update_package_update_and_removal(rig):
    port = free_port()
    rig.upstream.commit(app_files(port, "first"))
    rig.start()
    wait_state(rig, "web-1", "Installed")
    assert wait_for(lambda: http_get(port), what="the app").strip() == "first"
    assert rig.states("web-1") == ["Pending", "Installing", "Installed"]
    assert len(rig.running("web-1")) == 1

    # a parameter changes: the running container gets it
    before = len(rig.states("web-1"))
    rig.upstream.commit({"web-1.yaml": deployment("web-1", greeting="second", port=port)})
    wait_for(lambda: (http_get(port) or "").strip() == "second", what="the new greeting")
    wait_state(rig, "web-1", "Installed")
    assert rig.states("web-1")[before:] == ["Installing", "Installed"]

    # the package changes (another port inside the compose file)
    new_port = free_port()
    rig.upstream.commit(
        {"apps/web/compose.yaml": APP.format(image=IMAGE).replace("${PORT}", str(new_port))}
    )
    wait_for(lambda: http_get(new_port), what="the app on its new port")
    wait_state(rig, "web-1", "Installed")
    assert http_get(port) is None
    assert len(rig.running("web-1")) == 1

    # removal
    rig.upstream.commit({"web-1.yaml": None})
    wait_state(rig, "web-1", "Removed")
    assert rig.states("web-1")[-2:] == ["Removing", "Removed"]
    wait_for(lambda: not rig.containers(), what="no labelled container left")
    assert http_get(new_port) is None
    assert rig.stop() == 0


def test_bad_document_beside_good_ones_fails_alone(rig):
    port = free_port()
    files = app_files(port, "good")
    files["bad.yaml"] = deployment("bad-1", greeting="x", port=free_port()).replace(
        "applicationId: com-example-web", "applicationId: Not_Valid!"
    )
    rig.upstream.commit(files)
    result = rig.once()
    assert result.returncode == 1, result.stdout + result.stderr
    assert rig.last("web-1")["status"]["state"] == "Installed"
    bad = rig.last("bad-1")["status"]
    assert bad["state"] == "Failed"
    assert bad["error"]["code"] == "INVALID_APPLICATION_ID"
    assert "bad.yaml" in bad["error"]["message"]
    assert (http_get(port) or "").strip() == "good"
    assert {c["Labels"]["io.margo.deployment"] for c in rig.containers()} == {"web-1"}


def test_dependency_waits_then_follows(rig):
    port_a, port_b = free_port(), free_port()
    rig.upstream.commit(
        {
            "apps/web/compose.yaml": APP.format(image=IMAGE),
            "b.yaml": deployment("app-b", greeting="b", port=port_b, depends_on="app-a"),
            "a.yaml": deployment("app-a", greeting="a", port=port_a),
        }
    )
    result = rig.once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert rig.last("app-a")["status"]["state"] == "Installed"
    assert rig.last("app-b")["status"]["state"] == "Installed"
    order = [
        (r.path.rsplit("/", 2)[-2], r.json()["status"]["state"])
        for r in rig.sim.requests("/device/", "POST")
        if r.path.endswith("/status")
    ]
    assert order.index(("app-a", "Installed")) < order.index(("app-b", "Installing"))
    assert (http_get(port_a) or "").strip() == "a" and (http_get(port_b) or "").strip() == "b"


def test_dependency_on_a_missing_deployment_is_pending(rig):
    rig.upstream.commit(
        {
            "apps/web/compose.yaml": APP.format(image=IMAGE),
            "b.yaml": deployment("app-b", greeting="b", port=free_port(), depends_on="app-zzz"),
        }
    )
    result = rig.once()
    assert result.returncode == 1
    status = rig.last("app-b")["status"]
    assert status["state"] == "Pending"
    assert status["error"]["code"] == "WAITING_FOR_DEPENDENCY"
    assert rig.containers() == []
    # the WOS gives up on it: reported Removed, and nothing of it is left
    rig.upstream.commit({"b.yaml": None})
    assert rig.once().returncode == 0
    assert rig.last("app-b")["status"]["state"] == "Removed"
    assert not (rig.tmp / "state" / "deployments" / "app-b.json").exists()


@pytest.mark.parametrize("how", ["stop", "remove"])
def test_drift_is_restored_without_alarming_the_wos(rig, how):
    port = free_port()
    rig.upstream.commit(app_files(port, "steady"))
    rig.start()
    wait_state(rig, "web-1", "Installed")
    name = rig.running("web-1")[0]["Names"][0]
    argv = ["podman", "stop", "-t", "0", name] if how == "stop" else ["podman", "rm", "-f", name]
    subprocess.run(argv, env=rig.environ, capture_output=True, timeout=60, check=True)
    wait_for(
        lambda: len(rig.running("web-1")) == 1 and http_get(port),
        timeout=60,
        what="the container restored",
    )
    wait_for(lambda: "web-1/web restored" in rig.log_text(), timeout=120, what="the log line")
    assert "is not running as it should" in rig.log_text()
    assert rig.states("web-1") == ["Pending", "Installing", "Installed"]
    assert rig.stop() == 0


@pytest.mark.parametrize("point", ["before-apply", "after-apply"])
def test_sigkill_mid_apply_then_restart_converges(rig, point):
    port = free_port()
    rig.upstream.commit(app_files(port, "first"))
    agent = rig.start(MARGO_LITE_TEST_KILL_AT=point)
    assert agent.wait(timeout=120) == -signal.SIGKILL
    rig.start()
    wait_state(rig, "web-1", "Installed")
    assert (wait_for(lambda: http_get(port), what="the app") or "").strip() == "first"
    assert (
        len([c for c in rig.containers() if c["Labels"].get("io.margo.deployment") == "web-1"]) == 1
    )
    assert rig.stop() == 0
    record = json.loads(
        (rig.tmp / "state" / "deployments" / "web-1.json").read_text().split("\n", 1)[1]
    )
    assert record["state"] == "Installed"


@pytest.mark.parametrize("point", ["before-apply", "after-apply", "before-remove", "after-remove"])
def test_sigkill_during_an_update_or_removal_converges(rig, point):
    port = free_port()
    rig.upstream.commit(app_files(port, "first"))
    assert rig.once().returncode == 0
    if point.endswith("remove"):
        rig.upstream.commit({"web-1.yaml": None})
    else:
        rig.upstream.commit({"web-1.yaml": deployment("web-1", greeting="second", port=port)})
    agent = rig.start(MARGO_LITE_TEST_KILL_AT=point)
    assert agent.wait(timeout=120) == -signal.SIGKILL
    result = rig.once()
    assert result.returncode == 0, result.stdout + result.stderr + rig.log_text()[-2000:]
    labelled = [c for c in rig.containers() if c["Labels"].get("io.margo.deployment") == "web-1"]
    if point.endswith("remove"):
        assert labelled == []
        assert rig.last("web-1")["status"]["state"] == "Removed"
        assert not (rig.tmp / "state" / "deployments" / "web-1.json").exists()
    else:
        assert len(labelled) == 1 and labelled[0]["State"] == "running"
        assert (http_get(port) or "").strip() == "second"
        assert rig.last("web-1")["status"]["state"] == "Installed"


def test_status_command_shows_the_deployment(rig, cli):
    rig.upstream.commit(app_files(free_port()))
    assert rig.once().returncode == 0
    result = cli("-c", str(rig.config), "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (dep,) = report["deployments"]
    assert dep["id"] == "web-1" and dep["state"] == "Installed"
    assert dep["components"] == [{"name": "web", "state": "Installed", "error": None}]
    assert report["agent"]["commit"] == rig.upstream.tip()
    assert report["agent"]["last_poll_result"] in ("changed", "unchanged")
    table = cli("-c", str(rig.config), "status").stdout
    assert "web-1" in table and "Installed" in table
    assert os.environ.get("MARGO_LITE_CONFIG") is None


def test_drift_that_cannot_be_restored_is_reported_until_it_is(rig):
    port = free_port()
    rig.upstream.commit(app_files(port, "steady"))
    rig.start()
    wait_state(rig, "web-1", "Installed")
    with socket.socket() as blocker:  # someone else takes the app's port meanwhile
        name = rig.running("web-1")[0]["Names"][0]
        subprocess.run(
            ["podman", "rm", "-f", "-t", "0", name],
            env=rig.environ,
            capture_output=True,
            timeout=60,
            check=True,
        )
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        failed = wait_state(rig, "web-1", "Failed", timeout=60)["status"]
        assert failed["error"]["code"] == "CONTAINER_DOWN"
        assert "restoring failed" in failed["error"]["message"]
    wait_state(rig, "web-1", "Installed", timeout=120)  # the port is free again: restored
    assert (wait_for(lambda: http_get(port), what="the app") or "").strip() == "steady"
    states = rig.states("web-1")
    assert states[:3] == ["Pending", "Installing", "Installed"]
    assert states[3] == "Failed" and states[-2:] == ["Installing", "Installed"]
    assert rig.stop() == 0


def test_extended_downtime_keeps_apps_running_and_holds_reports(rig, git_server, cli):
    port = free_port()
    rig.upstream.commit(app_files(port, "offline"))
    rig.sim.fault = "down"
    assert rig.once().returncode == 0  # applied, though the WOS heard nothing
    assert rig.sim.statuses("web-1") == []
    waiting = json.loads(cli("-c", str(rig.config), "status", "--json").stdout)
    assert waiting["agent"]["outbox"] >= 3

    git_server.fault = Fault.SERVER_ERROR  # and now Git is away too
    try:
        rig.start()
        wait_for(lambda: rig.log_text().count("polling") >= 3, what="failed polls")
        assert (http_get(port) or "").strip() == "offline"
        assert len(rig.running("web-1")) == 1
    finally:
        git_server.fault = None
    rig.sim.fault = None
    wait_state(rig, "web-1", "Installed", timeout=120)
    assert rig.states("web-1") == ["Pending", "Installing", "Installed"]
    assert len(rig.running("web-1")) == 1
    assert rig.stop() == 0
