"""One device in the Margo 1.0 profile for end-to-end tests: the v1 WFM simulator over mutual
TLS, Compose OCI artifacts in Debian's docker-registry over TLS, podman, `margo-lite run`.

The running, stopping and container checks are the draft rig's (`tests/support/rig.py`);
only the configuration and the desired state differ: the WFM publishes v1 documents.

    rig.publish(doc(rig, "web-1.0", greeting="first", port=port))
    rig.start(); wait_state(rig, dep_id, "installed")
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import yaml

from margo_lite.devkit.registry import LocalRegistry
from margo_lite.devkit.svidca import Issued, SvidCA
from margo_lite.devkit.wfmsim import WfmSimulator
from tests.support.engines import IMAGE
from tests.support.rig import Rig

REPOSITORY = "e2e/web"
#: The package's revisions: each tells which one serves (a package update shows).
REVISIONS = ("1.0.0", "2.0.0")

COMPOSE = """\
services:
  web:
    image: {image}
    command:
      - sh
      - -c
      - echo "{revision} $$GREETING" > /www/index.html; exec httpd -f -p 8080 -h /www
    environment:
      GREETING: "${{GREETING:-hello}}"
    ports: ["127.0.0.1:${{PORT}}:8080"]
    stop_grace_period: 1s
"""


def push_packages(registry: LocalRegistry) -> str:
    """Every revision of the test app as a Compose OCI artifact; the `oci://` repository."""
    for revision in REVISIONS:
        compose = COMPOSE.format(image=IMAGE, revision=revision).encode()
        repository = registry.push_compose(REPOSITORY, revision, compose)
    return repository


class V1Rig(Rig):
    """A device whose agent speaks Margo 1.0 to `sim` and pulls from `repository`."""

    def __init__(
        self,
        tmp_path: Path,
        environ: dict[str, str],
        sim: WfmSimulator,
        ca: SvidCA,
        svid: Issued,
        repository: str,
        *,
        device: str,
    ) -> None:
        self.tmp = tmp_path
        self.device = device
        self.environ = environ
        self.sim = sim
        self.svid = svid
        self.repository = repository
        self.deployment_id = str(uuid.uuid4())
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device": {
                        "id": device,
                        "state_dir": str(tmp_path / "state"),
                        "runtime_dir": str(tmp_path / "run"),
                    },
                    "wos": {
                        "api": "v1",
                        "url": sim.url,
                        "ca_file": str(ca.ca_file),
                        "client_cert": str(svid.cert),
                        "client_key": str(svid.key),
                    },
                    "desired": {"source": "wos"},
                    "packages": {"ca_file": str(ca.ca_file)},
                    "poll": {"interval": "1s", "jitter": 0, "max_backoff": "2s"},
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

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def document(
        self, *, greeting: str, port: int, revision: str = "1.0.0", dep_id: str | None = None
    ) -> str:
        """A v1 ApplicationDeployment of the test app for this device."""
        dep_id = dep_id or self.deployment_id
        env = {"greeting": ("GREETING", greeting), "port": ("PORT", str(port))}
        return yaml.safe_dump(
            {
                "apiVersion": "application.margo.org/v1alpha1",
                "kind": "ApplicationDeployment",
                "id": dep_id,
                "metadata": {
                    "annotations": {"id": dep_id, "applicationId": "com-example-web"},
                    "name": f"web-{dep_id[:8]}",
                    "namespace": "e2e",
                    "deviceId": self.device,
                },
                "spec": {
                    "applicationId": "com-example-web",
                    "deploymentProfile": {
                        "type": "compose",
                        "components": [
                            {
                                "name": "web",
                                "properties": {
                                    "repository": self.repository,
                                    "revision": revision,
                                },
                            }
                        ],
                    },
                    "parameters": {
                        name: {"value": value, "targets": [{"pointer": var, "components": ["web"]}]}
                        for name, (var, value) in env.items()
                    },
                },
            }
        )

    def publish(self, *documents: str, version: int | None = None) -> int:
        """Make `documents` this device's whole desired state at the WFM; its version."""
        by_id = {yaml.safe_load(d)["id"]: d for d in documents}
        return self.sim.publish(by_id, version)

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file below state_dir with its (size, mtime in ns): what an idle agent keeps."""
        return {
            str(p.relative_to(self.state_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(self.state_dir.rglob("*"))
        }
