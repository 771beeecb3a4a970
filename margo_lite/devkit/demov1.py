"""`margo-lite demo --api v1`: the whole job against a Margo 1.0 WFM, on this machine.

A throwaway trust domain (a CA issuing SPIFFE X.509-SVIDs: the WFM's, the device's, and a
server certificate for the registry), the v1 WFM simulator over mutual TLS, Debian's
`docker-registry` holding the demo's Compose OCI artifact, and the real agent on a real
engine: installed, a parameter update, a package update (a new revision), a removal, each
seen as the WFM sees it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

from margo_lite.devkit import demo
from margo_lite.devkit.demo import DemoError, DemoNeedsError, say
from margo_lite.devkit.registry import LocalRegistry, RegistryError
from margo_lite.devkit.svidca import SvidCA, wfm_id
from margo_lite.devkit.wfmsim import WfmSimulator

DEPLOYMENT_ID = str(uuid.UUID("6d1f2c3a-0b4e-4c5d-8e6f-7a8b9c0d1e2f"))
REPOSITORY = "margo-demo/web"


def document(repository: str, revision: str, site_id: str) -> str:
    """The demo's ApplicationDeployment in the Margo 1.0 shape."""
    return yaml.safe_dump(
        {
            "apiVersion": "application.margo.org/v1alpha1",
            "kind": "ApplicationDeployment",
            "id": DEPLOYMENT_ID,
            "metadata": {
                "name": "demo-web",
                "namespace": "margo-demo",
                "deviceId": demo.DEVICE_ID,
            },
            "spec": {
                "applicationId": "com-example-demo-web",
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
                    "siteId": {
                        "value": site_id,
                        "targets": [{"pointer": "SITE_ID", "components": ["web"]}],
                    }
                },
            },
        },
        sort_keys=False,
    )


def _needs() -> tuple[Path, str]:
    for tool, package in (("openssl", "openssl"), ("docker-registry", "docker-registry")):
        if shutil.which(tool) is None:
            raise DemoNeedsError(f"the v1 demo needs {tool}: apt-get install {package}")
    return demo.find_static_busybox(), demo.find_engine(dict(os.environ))


def run(keep: bool = False) -> int:
    environ = dict(os.environ)
    try:
        busybox, engine = _needs()
    except DemoNeedsError as exc:
        print(f"margo-lite demo: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="margo-lite-demo-v1-"))
    seen: list[str] = []
    try:
        say(f"Using the container engine '{engine}'.")
        demo.build_image(engine, busybox, demo.IMAGE, workdir, environ)
        ca = SvidCA(workdir / "trust-domain")
        server, device = ca.wfm(), ca.device(demo.DEVICE_ID)
        registry_cert = ca.issue("registry", [], server=True)
        say(f"Made a trust domain: the WFM is {wfm_id()}, the device {device.uris[0]}.")
        port = demo.free_port()
        with (
            LocalRegistry(
                workdir / "registry", registry_cert.cert, registry_cert.key, ca.ca_file
            ) as registry,
            WfmSimulator(
                str(server.cert), str(server.key), str(ca.ca_file), wfm_id=wfm_id(), prefix="/margo"
            ) as sim,
        ):
            repository = registry.push_compose(REPOSITORY, "1.0.0", _compose(port, "1.0.0"))
            registry.push_compose(REPOSITORY, "1.1.0", _compose(port, "1.1.0"))
            say(f"Pushed the demo's Compose OCI artifact to {repository} (1.0.0 and 1.1.0).")
            sim.publish({DEPLOYMENT_ID: document(repository, "1.0.0", "SID-123-ABC")})
            say(f"Started a Margo 1.0 WFM simulator at {sim.url} (mutual TLS).")
            config_path = _write_config(workdir, sim.url, ca, device, engine)

            def narrate() -> None:
                for body, detail in demo.new_reports(sim.statuses(DEPLOYMENT_ID), seen):
                    say(
                        f"  WFM received: {body['status']['state']} "
                        f"(manifest {body['adoptedManifestVersion']}){detail}"
                    )

            def settled(text: str):
                def check() -> bool:
                    return (
                        bool(seen)
                        and seen[-1] == "installed"
                        and text in (demo.http_get(port) or "")
                    )

                return check

            with demo.running_agent(config_path, workdir / "agent.log", environ) as agent:
                demo.wait_until("installed", settled("SID-123-ABC"), agent, narrate)
                say(f"The app answers: {demo.http_get(port)!r}")
                say("The WFM changes a parameter: SITE_ID becomes SID-456-DEF.")
                sim.publish({DEPLOYMENT_ID: document(repository, "1.0.0", "SID-456-DEF")})
                agent.send_signal(signal.SIGUSR1)
                demo.wait_until("the update", settled("SID-456-DEF"), agent, narrate)
                say(f"The app now answers: {demo.http_get(port)!r}")
                say("The WFM moves the deployment to the package's revision 1.1.0.")
                sim.publish({DEPLOYMENT_ID: document(repository, "1.1.0", "SID-456-DEF")})
                agent.send_signal(signal.SIGUSR1)
                demo.wait_until("revision 1.1.0", settled("1.1.0"), agent, narrate)
                say(f"The app now answers: {demo.http_get(port)!r}")
                say("The WFM removes the deployment from the device's manifest.")
                sim.publish({})
                agent.send_signal(signal.SIGUSR1)
                demo.wait_until(
                    "removed", lambda: bool(seen) and seen[-1] == "removed", agent, narrate
                )
                demo.wait_until(
                    "the app to stop",
                    lambda: demo.http_get(port) is None,
                    agent,
                    narrate,
                    timeout=60,
                )
            say("Stopped the agent.")
        say(f"Demo finished: the WFM saw {' -> '.join(dict.fromkeys(seen))}.")
        return 0
    except (DemoError, RegistryError, subprocess.TimeoutExpired, OSError) as exc:
        say(f"Demo failed: {exc}")
        log_path = workdir / "agent.log"
        if log_path.exists():
            print("--- last lines of the agent's log ---", file=sys.stderr)
            lines = log_path.read_text(errors="replace").splitlines()[-30:]
            print("\n".join(lines), file=sys.stderr)
        return 1
    finally:
        demo._remove_leftovers(engine, environ)
        if keep:
            say(f"Kept the demo files in {workdir}.")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("Cleaned up.")


def _compose(port: int, version: str) -> bytes:
    text = demo.compose_file(port).replace("Hello from site", f"Hello from web {version}, site")
    return text.encode()


def _write_config(workdir: Path, url: str, ca: SvidCA, device, engine: str) -> Path:
    path = workdir / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device": {
                    "id": demo.DEVICE_ID,
                    "state_dir": str(workdir / "state"),
                    "runtime_dir": str(workdir / "run"),
                },
                "wos": {
                    "api": "v1",
                    "url": url,
                    "ca_file": str(ca.ca_file),
                    "client_cert": str(device.cert),
                    "client_key": str(device.key),
                },
                "desired": {"source": "wos"},
                "packages": {"ca_file": str(ca.ca_file)},
                "poll": {"interval": "2s", "jitter": 0},
                "runtime": {"engine": engine, "observe_interval": "5s"},
            },
            sort_keys=False,
        )
    )
    return path
