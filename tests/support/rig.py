"""One device for end-to-end tests: its desired-state repository on C git's http-backend,
the WOS simulator, podman, and `margo-lite run` / `once` started as a user would.

    def test_x(rig):                       # fixture from tests/conftest.py
        rig.upstream.commit(app_files(port))
        rig.start(); wait_state(rig, "web-1", "Installed")
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from margo_lite.devkit import wossim
from tests.support import firewall
from tests.support.engines import IMAGE
from tests.support.gitserver import GitServer, Upstream
from tests.support.wait import wait_for
from tests.support.wos import assert_no_secrets

ROOT = Path(__file__).resolve().parent.parent.parent

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
        self,
        tmp_path: Path,
        server: GitServer,
        environ: dict[str, str],
        sim: wossim.WosSimulator,
        config_overrides: dict[str, dict] | None = None,
        *,
        device: str = "gw-e2e",
    ) -> None:
        self.tmp = tmp_path
        self.device = device
        self.environ = environ
        self.sim = sim
        name = f"{tmp_path.name}.git"
        self.upstream = Upstream(server.root / name)
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device": {
                        "id": device,
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
        if config_overrides:
            self.configure(config_overrides)

    def configure(self, overrides: dict[str, dict]) -> None:
        """Change configuration keys: {section: {key: value}}; a value None removes the key.

        A running agent reads its configuration at start only.
        """
        data = yaml.safe_load(self.config.read_text())
        for section, keys in overrides.items():
            target = data.setdefault(section, {})
            for key, value in keys.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        self.config.write_text(yaml.safe_dump(data))

    @property
    def engine(self) -> str:
        """The engine's command line tool, as the configuration names it."""
        return yaml.safe_load(self.config.read_text())["runtime"]["engine"]

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

    def containers(self, *, every_device: bool = False) -> list[dict]:
        """This device's labelled containers (or every device's) as podman's `ps --format
        json` spells them (Id, Names, State, Labels as a mapping), whichever engine runs them.
        """
        found = self._labelled()
        if every_device:
            return found
        return [c for c in found if c["Labels"].get("io.margo.device") == self.device]

    def _labelled(self) -> list[dict]:
        if self.engine == "docker":
            out = subprocess.run(
                ["docker", "ps", "-a", "--no-trunc", "--filter", f"label={MANAGED}",
                 "--format", "{{json .}}"],
                capture_output=True, text=True, env=self.environ, timeout=60, check=True,
            ).stdout  # fmt: skip
            found = []
            for line in out.splitlines():
                c = json.loads(line)
                labels = dict(kv.split("=", 1) for kv in c["Labels"].split(",") if "=" in kv)
                found.append(
                    {"Id": c["ID"], "Names": [c["Names"]], "State": c["State"], "Labels": labels}
                )
            return found
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

    def cleanup(self) -> None:
        """Kill the agent if it still runs, remove every labelled container and the firewall
        rules killed podman calls left, and check the agent's log for the test secrets."""
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(timeout=30)
        ids = [c["Id"] for c in self.containers()]  # another device's stay: not ours
        if ids:
            subprocess.run(
                [self.engine, "rm", "-f", *(["-t", "0"] if self.engine == "podman" else []), *ids],
                env=self.environ,
                capture_output=True,
                timeout=120,
            )
        if self.engine == "podman":  # what a killed podman call left in the host's firewall
            firewall.drop_leftovers(self.environ)
        assert_no_secrets(self.log_text())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


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
