"""The agent end to end on real parts: C git's http-backend, the WOS simulator, podman.

Each test drives `margo-lite run` or `margo-lite once` as a user would, then checks what a
user checks: the containers in the engine, what the app answers, and the statuses the WOS
received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from margo_lite import wossim
from tests.conftest import ROOT
from tests.support.engines import IMAGE, free_port, http_get
from tests.support.gitserver import GitServer, Upstream
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

MANAGED = "io.margo.managed-by=margo-lite"

APP = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo \\"$$GREETING\\" > /www/index.html; exec httpd -f -p 8080 -h /www"]
    environment:
      GREETING: "${{GREETING:-hello}}"
    ports: ["127.0.0.1:${{PORT}}:8080"]
    stop_grace_period: 1s
"""


def deployment(
    dep_id: str,
    *,
    greeting: str,
    port: int,
    package: str = "apps/web",
    depends_on: str | None = None,
) -> str:
    annotations = {"id": dep_id, "applicationId": "com-example-web"}
    if depends_on:
        annotations["margo-lite.io/depends-on"] = depends_on
    return yaml.safe_dump(
        {
            "apiVersion": "application.margo.org/v1alpha1",
            "kind": "ApplicationDeployment",
            "metadata": {"annotations": annotations, "name": dep_id, "namespace": "test"},
            "spec": {
                "deploymentProfile": {
                    "type": "docker-compose",
                    "components": [{"name": "web", "properties": {"packageLocation": package}}],
                },
                "parameters": {
                    "greeting": {
                        "value": greeting,
                        "targets": [{"pointer": "ENV.GREETING", "components": ["web"]}],
                    },
                    "port": {
                        "value": str(port),
                        "targets": [{"pointer": "ENV.PORT", "components": ["web"]}],
                    },
                },
            },
        }
    )


class Rig:
    """One device: its Git repository on a real smart-HTTP server, a WOS, podman."""

    def __init__(
        self, tmp_path: Path, server: GitServer, environ: dict[str, str], sim: wossim.WosSimulator
    ) -> None:
        self.tmp = tmp_path
        self.environ = environ
        self.sim = sim
        name = f"{tmp_path.name}.git"
        self.upstream = Upstream(server.root / name)
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device": {
                        "id": "gw-e2e",
                        "state_dir": str(tmp_path / "state"),
                        "runtime_dir": str(tmp_path / "run"),
                    },
                    "wos": {"url": sim.url},
                    "git": {"url": server.url(name)},
                    "poll": {"interval": "1s", "jitter": 0},
                    "runtime": {
                        "engine": "podman",
                        "compose": "builtin",
                        "observe_interval": "1s",
                        "health_timeout": "30s",
                    },
                }
            )
        )
        self.agent: subprocess.Popen | None = None
        self.log = tmp_path / "agent.log"

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.environ, "PYTHONPATH": str(ROOT), **extra}

    def start(self, **extra: str) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "margo_lite", "-c", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(**extra),
            )
        return self.agent

    def stop(self) -> int:
        assert self.agent is not None
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
        return self.agent.wait(timeout=60)

    def once(self, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "margo_lite", "-c", str(self.config), "once"],
            capture_output=True,
            text=True,
            env=self.env(**extra),
            timeout=300,
        )

    def states(self, dep_id: str) -> list[str]:
        return [body["status"]["state"] for body in self.sim.statuses(dep_id)]

    def last(self, dep_id: str) -> dict | None:
        statuses = self.sim.statuses(dep_id)
        return statuses[-1] if statuses else None

    def containers(self) -> list[dict]:
        out = subprocess.run(
            ["podman", "ps", "-a", "--filter", f"label={MANAGED}", "--format", "json"],
            capture_output=True,
            text=True,
            env=self.environ,
            timeout=60,
            check=True,
        ).stdout
        return json.loads(out or "[]")

    def running(self, dep_id: str) -> list[dict]:
        return [
            c
            for c in self.containers()
            if c["Labels"].get("io.margo.deployment") == dep_id and c["State"] == "running"
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    with GitServer(tmp_path_factory.mktemp("git")) as server:
        yield server


@pytest.fixture
def rig(tmp_path, git_server, podman_environ):
    with wossim.WosSimulator() as sim:
        r = Rig(tmp_path, git_server, podman_environ, sim)
        try:
            yield r
        finally:
            if r.agent is not None and r.agent.poll() is None:
                r.agent.kill()
                r.agent.wait(timeout=30)
            ids = [c["Id"] for c in r.containers()]
            if ids:
                subprocess.run(
                    ["podman", "rm", "-f", "-t", "0", *ids],
                    env=podman_environ,
                    capture_output=True,
                    timeout=120,
                )


def wait_state(rig: Rig, dep_id: str, state: str, timeout: float = 120) -> dict:
    def reached():
        assert rig.agent is None or rig.agent.poll() is None, rig.log_text()[-3000:]
        last = rig.last(dep_id)
        return last if last and last["status"]["state"] == state else None

    return wait_for(reached, timeout=timeout, what=f"{dep_id} {state} at the WOS")


def app_files(port: int, greeting: str = "hello", dep_id: str = "web-1") -> dict[str, str]:
    return {
        "apps/web/compose.yaml": APP.format(image=IMAGE),
        f"{dep_id}.yaml": deployment(dep_id, greeting=greeting, port=port),
    }


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
    wait_for(lambda: "web-1/web restored" in rig.log_text(), what="the agent's log line")
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
