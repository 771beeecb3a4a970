"""The trust boundary, attacked through the running agent on real engines (issue 13).

One desired state holds a good deployment beside one deployment per attack that once got
past the policy gate or crashed the agent: parameter values that changed type between
check and apply (a list, a mapping, a date), a host path given as a named volume, an
engine option smuggled in as the image, a list-index pointer whose relative bind escaped
the package, a squat on the good deployment's network, and a container that rewrites its
own package to be restored privileged. `margo-lite run` must report each attack Failed
with its code, keep the good one Installed, mount nothing of the host and run nothing
privileged, and stay up. Once on podman with the built-in driver, once on docker with
docker-compose (the external-tool path).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite.backends import project
from margo_lite.devkit import wossim
from tests.support.engines import IMAGE, free_port
from tests.support.gitserver import GitServer
from tests.support.pkgfixtures import make_tar
from tests.support.pkgserver import PackageServer
from tests.support.rig import APP, Rig, deployment, wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

PLAIN = f"""\
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "exec httpd -f -p 8080 -h /"]
    volumes: ["./data:/data"]
    stop_grace_period: 1s
"""

HOSTPATH_VOLUME = f"""\
services:
  web:
    image: {IMAGE}
    volumes: ["root:/host"]
volumes:
  root: {{external: true, name: /}}
"""

HOSTPATH_LONG = f"""\
services:
  web:
    image: {IMAGE}
    volumes: [{{type: volume, source: /etc, target: /host}}]
"""

# Binds its own package folder and rewrites the compose file, then exits: self-heal must
# not start the rewritten file, nor the recorded one from a changed package.
TAMPER = f"""\
services:
  web:
    image: {IMAGE}
    command:
      - sh
      - -c
      - "sleep 4; printf '    privileged: true\\\\n' >> /pkg/compose.yaml; exit 3"
    volumes: [".:/pkg"]
    stop_grace_period: 1s
"""


def attack(dep_id: str, package: str, parameters: dict | None = None) -> str:
    """A deployment of `package` with parameters {pointer: value} on component web."""
    return yaml.safe_dump(
        {
            "apiVersion": "application.margo.org/v1alpha1",
            "kind": "ApplicationDeployment",
            "metadata": {
                "annotations": {"id": dep_id, "applicationId": "com-example-attack"},
                "name": dep_id,
                "namespace": "test",
            },
            "spec": {
                "deploymentProfile": {
                    "type": "docker-compose",
                    "components": [{"name": "web", "properties": {"packageLocation": package}}],
                },
                "parameters": {
                    f"p{i}": {"value": value, "targets": [{"pointer": ptr, "components": ["web"]}]}
                    for i, (ptr, value) in enumerate((parameters or {}).items())
                },
            },
        }
    )


def rig_device() -> str:
    """The device the rig configures (tests/support/rig.py's default)."""
    return inspect.signature(Rig).parameters["device"].default


def squat() -> str:
    victim = project.project_name("good", "web", device=rig_device()) + "_default"
    return f"{PLAIN}networks:\n  default: {{name: {victim}}}\n"


#: deployment id -> (files, the code its Failed report must carry)
ATTACKS = {
    # 1: parameter values of every type reach the policy as they reach the engine
    "rc1-list": (
        {"rc1-list.yaml": attack("rc1-list", "apps/plain", {"services.web.volumes": ["/:/host"]})},
        "POLICY_DENIED",
    ),
    "rc1-mapping": (
        {
            "rc1-mapping.yaml": attack(
                "rc1-mapping",
                "apps/plain",
                {"services.evil": {"image": IMAGE, "privileged": True}},
            )
        },
        "POLICY_DENIED",
    ),
    "rc1-date": (
        {"rc1-date.yaml": attack("rc1-date", "apps/plain", {"x-when.at": dt.date(2026, 1, 1)})},
        "COMPOSE_INVALID",
    ),
    # 2: a host path is no named volume
    "rc2-external": (
        {
            "apps/hostvol/compose.yaml": HOSTPATH_VOLUME,
            "rc2-external.yaml": attack("rc2-external", "apps/hostvol"),
        },
        "COMPOSE_INVALID",
    ),
    "rc2-long": (
        {
            "apps/hostlong/compose.yaml": HOSTPATH_LONG,
            "rc2-long.yaml": attack("rc2-long", "apps/hostlong"),
        },
        "COMPOSE_INVALID",
    ),
    # 3: an option in the image's place
    "rc3-image": (
        {
            "rc3-image.yaml": attack(
                "rc3-image", "apps/plain", {"services.web.image": "--privileged"}
            )
        },
        "IMAGE_INVALID",
    ),
    # 4: a list-index pointer: relative binds resolve inside the package, then are checked
    "rc4-index": (
        {
            "rc4-index.yaml": attack(
                "rc4-index", "apps/plain", {"services.web.volumes.0": "../../../../../../..:/host"}
            )
        },
        "POLICY_DENIED",
    ),
    # another deployment's network is not a name a document may choose
    "squat": (
        {"apps/squat/compose.yaml": squat(), "squat.yaml": attack("squat", "apps/squat")},
        "COMPOSE_INVALID",
    ),
}  # fmt: skip


#: Root cause 4 as it was found: the same pointer on a downloaded package (a real HTTP
#: server), where relative binds used to be made absolute before the pointer applied.
DOWNLOADED = "rc4-downloaded"
DOWNLOADED_POINTER = {"services.web.volumes.0": "../../../../../../..:/host"}


def desired_tree(port: int, plain_url: str) -> dict[str, str]:
    files = {
        f"{DOWNLOADED}.yaml": attack(DOWNLOADED, plain_url, DOWNLOADED_POINTER),
        "apps/web/compose.yaml": APP.format(image=IMAGE),
        "good.yaml": deployment("good", greeting="hello", port=port),
        "apps/plain/compose.yaml": PLAIN,
        "apps/tamper/compose.yaml": TAMPER,
        "tamper.yaml": attack("tamper", "apps/tamper"),
    }
    for attack_files, _ in ATTACKS.values():
        files.update(attack_files)
    return files


def inspect_all(rig: Rig) -> list[dict]:
    ids = [c["Id"] for c in rig.containers()]
    if not ids:
        return []
    out = subprocess.run(
        [rig.engine, "inspect", *ids],
        capture_output=True,
        text=True,
        env=rig.environ,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def run_attacks(rig: Rig) -> None:
    with PackageServer(None) as server:
        plain = make_tar([("compose.yaml", PLAIN.encode())])
        rig.upstream.commit(desired_tree(free_port(), server.put("/plain.tar.gz", plain)))
        rig.start()
        wait_state(rig, "good", "Installed", timeout=240)
        codes = {dep_id: code for dep_id, (_, code) in ATTACKS.items()}
        for dep_id, code in {**codes, DOWNLOADED: "POLICY_DENIED"}.items():
            last = wait_state(rig, dep_id, "Failed", timeout=120)
            assert last["status"]["error"]["code"] == code, (dep_id, last)
        assert server.downloads("/plain.tar.gz") >= 1  # refused after download, not before

    def tampered() -> bool:
        return any(
            body["status"]["state"] == "Failed"
            and body["status"]["error"]["code"] == "PACKAGE_TAMPERED"
            for body in rig.sim.statuses("tamper")
        )

    wait_for(tampered, timeout=180, what="tamper reported Failed with PACKAGE_TAMPERED")
    assert "Installed" in rig.states("tamper")  # it was installed, then refused on restore

    state_dir = str(rig.tmp)
    for container in inspect_all(rig):
        labels = container["Config"]["Labels"]
        assert not container["HostConfig"].get("Privileged"), labels
        assert labels["io.margo.deployment"] in ("good", "tamper"), labels
        for mount in container.get("Mounts") or []:
            if mount.get("Type") == "bind":
                assert mount["Source"].startswith(state_dir), mount  # the package folder
    assert rig.agent is not None and rig.agent.poll() is None, rig.log_text()[-3000:]
    assert rig.last("good")["status"]["state"] == "Installed"
    assert "Traceback" not in rig.log_text()
    assert rig.stop() == 0


def test_attacks_fail_with_their_codes_on_podman(rig: Rig) -> None:
    run_attacks(rig)


@pytest.fixture
def docker_rig(tmp_path: Path, git_server: GitServer, docker_environ: dict) -> Iterator[Rig]:
    with wossim.WosSimulator() as sim:
        r = Rig(tmp_path, git_server, docker_environ, sim)
        r.configure({"runtime": {"engine": "docker", "compose": "docker-compose"}})
        try:
            yield r
        finally:
            r.cleanup()


def test_attacks_fail_with_their_codes_on_docker_compose(docker_rig: Rig) -> None:
    run_attacks(docker_rig)
