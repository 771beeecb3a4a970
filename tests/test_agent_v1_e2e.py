"""The agent end to end in the Margo 1.0 profile, on real parts: the v1 WFM simulator over
mutual TLS with test SVIDs, Debian's docker-registry over TLS holding the Compose OCI
artifact, and podman. Every request body the agent sent is checked against the rc.3 OpenAPI.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite.devkit.registry import LocalRegistry
from margo_lite.devkit.svidca import SvidCA, wfm_id
from margo_lite.devkit.wfmsim import WfmSimulator
from tests.conftest import ROOT
from tests.support import openapi
from tests.support.engines import IMAGE, free_port, http_get
from tests.support.rig import APP
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

DEVICE = "gw-v1"
DEP = str(uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100"))


class Device:
    """A v1 device: its configuration, the WFM and the registry it talks to."""

    def __init__(self, folder: Path, environ: dict[str, str]) -> None:
        self.folder, self.environ = folder, environ
        self.ca = SvidCA(folder / "trust-domain")
        server, self.svid = self.ca.wfm(), self.ca.device(DEVICE)
        registry_cert = self.ca.issue("registry", [], server=True)
        self.registry = LocalRegistry(
            folder / "registry", registry_cert.cert, registry_cert.key, self.ca.ca_file
        )
        self.sim = WfmSimulator(
            str(server.cert), str(server.key), str(self.ca.ca_file), wfm_id=wfm_id(), prefix="/m"
        )
        self.config = folder / "config.yaml"

    def __enter__(self) -> Device:
        self.registry.__enter__()
        self.sim.start()
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device": {
                        "id": DEVICE,
                        "state_dir": str(self.folder / "state"),
                        "runtime_dir": str(self.folder / "run"),
                    },
                    "wos": {
                        "api": "v1",
                        "url": self.sim.url,
                        "ca_file": str(self.ca.ca_file),
                        "client_cert": str(self.svid.cert),
                        "client_key": str(self.svid.key),
                    },
                    "packages": {"ca_file": str(self.ca.ca_file)},
                    "runtime": {"engine": "podman"},
                }
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.sim.stop()
        self.registry.__exit__()

    def push(self, tag: str, port: int) -> str:
        compose = APP.format(image=IMAGE).replace("${PORT}", str(port)).encode()
        return self.registry.push_compose("apps/web", tag, compose)

    def publish(self, repository: str, revision: str, greeting: str) -> int:
        doc = {
            "apiVersion": "application.margo.org/v1alpha1",
            "kind": "ApplicationDeployment",
            "id": DEP,
            "metadata": {"name": "web", "namespace": "margo-e2e", "deviceId": DEVICE},
            "spec": {
                "applicationId": "com-example-web",
                "deploymentProfile": {
                    "type": "compose",
                    "components": [
                        {
                            "name": "web",
                            "properties": {"repository": repository, "revision": revision},
                        }
                    ],
                },
                "parameters": {
                    "greeting": {
                        "value": greeting,
                        "targets": [{"pointer": "GREETING", "components": ["web"]}],
                    }
                },
            },
        }
        return self.sim.publish({DEP: yaml.safe_dump(doc)})

    def once(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "margo_lite", "-c", str(self.config), "once"],
            capture_output=True,
            text=True,
            env={**self.environ, "PYTHONPATH": str(ROOT)},
            timeout=300,
        )

    def states(self) -> list[tuple[str, int]]:
        return [(b["status"]["state"], b["adoptedManifestVersion"]) for b in self.sim.statuses(DEP)]


@pytest.fixture
def device(tmp_path: Path, podman_environ: dict[str, str]) -> Iterator[Device]:
    if not LocalRegistry.available():
        pytest.skip("docker-registry is not installed")
    with Device(tmp_path, podman_environ) as running:
        yield running


def test_install_update_new_revision_idle_and_removal(device):
    port, new_port = free_port(), free_port()
    repository = device.push("1.0.0", port)
    device.push("1.1.0", new_port)
    assert device.publish(repository, "1.0.0", "first") == 1
    result = device.once()
    assert result.returncode == 0, result.stderr
    assert (http_get(port) or "").strip() == "first"
    assert device.states()[-1] == ("installed", 1)

    device.publish(repository, "1.0.0", "second")
    assert device.once().returncode == 0
    assert (http_get(port) or "").strip() == "second"
    assert device.states()[-1] == ("installed", 2)

    device.publish(repository, "1.1.0", "second")
    assert device.once().returncode == 0
    wait_for(lambda: http_get(new_port), what="the new revision's port")
    assert http_get(port) is None
    assert device.states()[-1] == ("installed", 3)

    # idle: one conditional GET of the manifest, answered 304
    before = len(device.sim.requests())
    assert device.once().returncode == 0
    idle = device.sim.requests()[before:]
    assert [(r.method, r.path, r.answer) for r in idle] == [("GET", "/api/v1/deployments", 304)]

    device.sim.publish({})
    assert device.once().returncode == 0
    assert device.states()[-2:] == [("removing", 4), ("removed", 4)]
    assert http_get(new_port) is None

    # every body the agent sent is valid under the rc.3 OpenAPI
    for seen in device.sim.requests():
        if seen.method == "POST":
            assert openapi.errors(seen.json(), *openapi.STATUS) == [], seen.path
        elif seen.method == "PUT":
            assert openapi.errors(seen.json(), *openapi.CAPABILITIES) == [], seen.path
    assert device.sim.capabilities[DEVICE]["properties"]["supportedDeploymentTypes"] == ["compose"]


def test_the_v1_demo_runs_the_whole_job(podman_environ):
    if not LocalRegistry.available():
        pytest.skip("docker-registry is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "margo_lite", "demo", "--api", "v1"],
        capture_output=True,
        text=True,
        env={**podman_environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the WFM saw pending -> installing -> installed -> removing -> removed" in result.stdout
    assert "Hello from web 1.1.0, site SID-456-DEF" in result.stdout
