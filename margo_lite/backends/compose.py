"""Compose drivers that run an external tool: docker compose (v2 plugin), docker-compose (v1),
podman-compose.

Each gets the final document (interpolated, labelled) written as a file in the project's
work folder, and is asked for `up -d`: the tools themselves recreate only the services whose
configuration changed, and never touch volumes. Containers of services that left the file
are removed by the backend, by label, before `up` (podman-compose 1.6's `--remove-orphans`
also removes unchanged services when another one is recreated). Removal does not go
through the tools: the backend removes by label, which works even when the file is lost.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from margo_lite import logs
from margo_lite.backends import project
from margo_lite.backends.engine import Container, Engine
from margo_lite.backends.runner import answers, run_tool
from margo_lite.constants import COMPOSE_FILE
from margo_lite.fileio import write_file_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)


class Driver:
    """Brings a compose project's containers to a document. Subclasses say how."""

    name = "driver"

    def __init__(self, engine: Engine, *, timeout: float = 600.0) -> None:
        self.engine = engine
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine!r})"

    def available(self) -> bool:
        raise NotImplementedError

    def check(self, doc: Mapping[str, Any]) -> None:
        """Refuse a document this driver cannot run faithfully, before anything is touched."""

    def up(
        self,
        name: str,
        doc: Mapping[str, Any],
        workdir: Path,
        current: Sequence[Container] | None = None,
    ) -> None:
        """Create or update the project `name` to `doc`; only changed services are recreated.
        `current`: the project's containers as the caller just listed them (saves a driver
        that lists them itself an engine command); None: unknown."""
        raise NotImplementedError


class ExternalDriver(Driver):
    """A compose command line; `command` is its argv prefix."""

    command: tuple[str, ...] = ()
    extra_up: tuple[str, ...] = ()

    def available(self) -> bool:
        return answers(
            lambda: self._run(["version"], what=f"{self.name} version", cwd=None, timeout=60),
            self.command[0],
            self.engine.environ,
        )

    def _global(self, name: str, file: Path) -> list[str]:
        return ["-p", name, "-f", str(file)]

    def up(
        self,
        name: str,
        doc: Mapping[str, Any],
        workdir: Path,
        current: Sequence[Container] | None = None,
    ) -> None:
        from margo_lite import composedoc  # late: the start's sweep reads no compose document

        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        file = workdir / COMPOSE_FILE
        # The document can hold parameter values (secrets): readable by root only.
        write_file_atomic(file, project.dump(composedoc.tool_document(doc)), mode=0o600)
        self._run(
            [*self._global(name, file), "up", "-d", *self.extra_up],
            what=f"{self.name} up {name}",
            cwd=workdir,
        )

    def _run(
        self, argv: Sequence[str], *, what: str, cwd: Path | None, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        return run_tool(
            [*self.command, *argv],
            what=what,
            environ=self.engine.environ,
            timeout=timeout or self.timeout,
            cwd=cwd,
        )


class DockerComposePlugin(ExternalDriver):
    name = "docker-compose-plugin"
    command = ("docker", "compose")

    def available(self) -> bool:
        return self.engine.name == "docker" and super().available()


class DockerComposeV1(ExternalDriver):
    name = "docker-compose"
    command = ("docker-compose",)

    def _global(self, name: str, file: Path) -> list[str]:
        return [*super()._global(name, file), "--project-directory", str(file.parent)]


class PodmanCompose(ExternalDriver):
    """podman-compose 1.6 or newer: older releases recreate every service on any change
    (1.1 to 1.5) or none at all (1.0, Debian 12's package), so they are not used."""

    name = "podman-compose"
    command = ("podman-compose",)
    minimum = (1, 6)

    def available(self) -> bool:
        if not super().available():
            return False
        found = self.version()
        if found < self.minimum:
            log.warning(
                "podman-compose %s is too old (need %s or newer); not using it",
                ".".join(map(str, found)),
                ".".join(map(str, self.minimum)),
            )
            return False
        return True

    def version(self) -> tuple[int, ...]:
        out = self._run(["version"], what="podman-compose version", cwd=None, timeout=60)
        match = re.search(r"podman-composer? version:? *(\d+)\.(\d+)", out.stdout + out.stderr)
        return tuple(int(n) for n in match.groups()) if match else (0,)

    def _global(self, name: str, file: Path) -> list[str]:
        # No pod: a pod would be one more object without our labels.
        return ["--in-pod", "false", *super()._global(name, file)]
