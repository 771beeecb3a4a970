"""The podman and docker command lines, behind one `Engine` class.

Everything the backends do to containers, networks, volumes and images goes through
`Engine.run(argv)`, which runs the engine through `runner.run_tool` (a failed command is a
coded `EngineError` with the engine's own message). Podman and Docker differ only in a few
details, kept in the two subclasses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence

from margo_lite import imageref, logs
from margo_lite.backends.runner import answers, reworded, run_tool
from margo_lite.errors import ComposeError, EngineError
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Container:
    """What the backends need to know of one container, read from `inspect`."""

    id: str
    name: str
    labels: Mapping[str, str]
    status: str  # created, running, exited, restarting, paused, ...
    exit_code: int
    health: str  # "" without a health check; starting, healthy, unhealthy
    restart_count: int
    started_at: str
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)


class Engine:
    """One container engine's CLI. `environ` is the whole environment its commands get."""

    name = "engine"
    program = "engine"

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        program: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.environ = dict(environ)
        self.program = program or self.program
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.program!r})"

    # --- running commands ------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, what: str = "", timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        """Run the engine with `argv`; raise a coded EngineError when it fails."""
        return run_tool(
            [self.program, *argv],
            what=what or f"{self.name} {argv[0]}",
            environ=self.environ,
            timeout=timeout or self.timeout,
        )

    def available(self) -> bool:
        """The program exists and its engine answers."""
        return answers(lambda: self.run(["version"], timeout=30), self.program, self.environ)

    # --- containers ------------------------------------------------------------------------

    def containers(self, labels: Mapping[str, str]) -> list[Container]:
        """Every container (any state) carrying all of `labels`."""
        argv = ["ps", "-a", "-q", "--no-trunc"]
        for key, value in labels.items():
            argv += ["--filter", f"label={key}={value}"]
        return self.inspect_containers(self.run(argv).stdout.split(), labels)

    def inspect_containers(self, ids: Sequence[str], labels: Mapping[str, str]) -> list[Container]:
        """The containers `ids` that still exist and carry all of `labels`, fully read (one
        command): for a second look at containers a listing named."""
        found = []
        for item in self._inspect("container", ids):
            container = self._container(item)
            if all(container.labels.get(k) == v for k, v in labels.items()):
                found.append(container)
        return found

    def glance(self, labels: Mapping[str, str]) -> list[Container]:
        """Like `containers`, for polling while a start settles and for a look at labels and
        states: the engine may save a command here; `restart_count` may then read 0 and
        `started_at` be coarser."""
        return self.containers(labels)

    def container(self, ref: str) -> Container | None:
        """One container by id or name; None when there is none."""
        found = self._inspect("container", [ref])
        return self._container(found[0]) if found else None

    def _inspect(self, kind: str, ids: Sequence[str]) -> list[dict]:
        """`inspect` of objects that may vanish meanwhile: those are left out, not errors."""
        if not ids:
            return []
        try:  # one command for all, the common case
            return list(json.loads(self.run([kind, "inspect", *ids]).stdout or "[]"))
        except EngineError as exc:
            if not re.search(r"no such|not found|not known", exc.stderr, re.I):
                raise
        found = []
        for one in ids:
            try:
                out = self.run([kind, "inspect", one]).stdout
            except EngineError as exc:
                if re.search(r"no such|not found|not known", exc.stderr, re.I):
                    continue
                raise
            found.extend(json.loads(out or "[]"))
        return found

    def _container(self, item: Mapping[str, Any]) -> Container:
        state = item.get("State") or {}
        health = state.get("Health") or state.get("Healthcheck") or {}
        return Container(
            id=item.get("Id", ""),
            name=str(item.get("Name", "")).lstrip("/"),
            labels=(item.get("Config") or {}).get("Labels") or {},
            status=str(state.get("Status", "")).lower(),
            exit_code=int(state.get("ExitCode") or 0),
            health=str(health.get("Status", "") or "").lower(),
            restart_count=int(item.get("RestartCount") or 0),
            started_at=str(state.get("StartedAt", "")),
            raw=item,
        )

    def remove_container(self, ref: str) -> None:
        """Stop (within the container's own stop timeout) and remove; gone already is fine."""
        gone = r"no such container|no container with"
        self._remove(["rm", "-f", ref], f"remove container {ref}", gone)

    def run_health_check(self, ref: str) -> None:
        """Make the engine run a container's health check now (podman without systemd)."""

    def reap_orphans(self, project: str) -> int:
        """End engine helper processes left behind for containers of compose project
        `project` that the engine no longer knows; returns how many."""
        return 0

    # --- networks and volumes --------------------------------------------------------------

    def _list(self, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Networks or volumes carrying all of `labels`, as {"Name": ..., "Labels": ...}."""
        argv = [kind, "ls", "-q"]
        for key, value in labels.items():
            argv += ["--filter", f"label={key}={value}"]
        names = self.run(argv).stdout.split()
        found = []
        for item in self._inspect(kind, names):
            # podman spells a network's keys in lower case
            item_labels = item.get("Labels") or item.get("labels") or {}
            if all(item_labels.get(k) == v for k, v in labels.items()):
                found.append({"Name": item.get("Name") or item.get("name"), "Labels": item_labels})
        return found

    def networks(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return self._list("network", labels)

    def volumes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return self._list("volume", labels)

    def create_network(self, name: str, labels: Mapping[str, str]) -> None:
        argv = ["network", "create"]
        for key, value in labels.items():
            argv.append(f"--label={key}={value}")
        self.run([*argv, _object_name(name)], what=f"create network {name}")

    def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        argv = ["volume", "create"]
        for key, value in labels.items():
            argv.append(f"--label={key}={value}")
        self.run([*argv, _object_name(name)], what=f"create volume {name}")

    def remove_network(self, name: str) -> None:
        gone = r"not found|no such network|unable to find"
        self._remove(["network", "rm", name], f"remove network {name}", gone)

    def remove_volume(self, name: str) -> None:
        self._remove(["volume", "rm", name], f"remove volume {name}", r"no such volume|not found")

    def _remove(self, argv: list[str], what: str, gone: str) -> None:
        """Run a remove command; an object already gone (stderr matches `gone`) is fine."""
        try:
            self.run(argv, what=what)
        except EngineError as exc:
            if not re.search(gone, exc.stderr, re.I):
                raise

    # --- images ----------------------------------------------------------------------------

    def has_image(self, image: str) -> bool:
        imageref.check(image, "image")
        try:
            self.run(["image", "inspect", image], what=f"inspect image {image}")
        except EngineError as exc:
            if exc.code == "ENGINE_UNAVAILABLE":
                raise
            return False
        return True

    def ensure_image(self, image: str) -> None:
        """Use a local image as it is; pull a missing one; fail with IMAGE_MISSING naming it.

        The reference is checked against the grammar first: it is a positional word."""
        imageref.check(image, "image")
        if self.has_image(image):
            return
        log.info("image %s is not on this device: pulling it", image)
        try:
            self.run(["pull", image], what=f"pull image {image}")
        except EngineError as exc:
            if exc.code == "ENGINE_UNAVAILABLE":
                raise
            raise reworded(
                exc,
                f"image {image} is not on this device and cannot be pulled: "
                f"{exc.message.split(': ', 1)[-1]}",
                "IMAGE_MISSING",
            ) from None


class Podman(Engine):
    name = "podman"
    program = "podman"

    def run_health_check(self, ref: str) -> None:
        # Without systemd, podman never runs health checks on its own (it uses systemd
        # timers); running one here keeps the recorded health current. Its failure is the
        # state we read next, not an error.
        try:
            self.run(["healthcheck", "run", ref], what=f"health check of {ref}", timeout=120)
        except EngineError as exc:
            if exc.code == "ENGINE_UNAVAILABLE":
                raise

    def glance(self, labels: Mapping[str, str]) -> list[Container]:
        # One `ps --format json` names state, exit code, labels and health (in Status),
        # where `ps -q` + `inspect` take two commands; it has no restart count.
        argv = ["ps", "-a", "--no-trunc", "--format", "json"]
        for key, value in labels.items():
            argv += ["--filter", f"label={key}={value}"]
        try:
            items = json.loads(self.run(argv).stdout or "[]")
        except ValueError:
            return self.containers(labels)
        found = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("Labels") or {}, dict):
                continue
            item_labels = item.get("Labels") or {}
            if not all(item_labels.get(k) == v for k, v in labels.items()):
                continue
            names = item.get("Names") or [""]
            health = re.search(r"\((starting|healthy|unhealthy)\)", str(item.get("Status", "")))
            found.append(
                Container(
                    id=str(item.get("Id", "")),
                    name=str(names[0] if isinstance(names, list) and names else names),
                    labels=item_labels,
                    status=str(item.get("State", "")).lower(),
                    exit_code=int(item.get("ExitCode") or 0),
                    health=health.group(1) if health else "",
                    restart_count=0,
                    started_at=str(item.get("StartedAt", "")),
                    raw=item,
                )
            )
        return found

    def networks(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        # `network ls --format json` holds each network's labels: one command, where
        # `ls -q` + `inspect` take two. The labels are checked here all the same.
        argv = ["network", "ls", "--format", "json"]
        for key, value in labels.items():
            argv += ["--filter", f"label={key}={value}"]
        try:
            items = json.loads(self.run(argv).stdout or "[]")
        except ValueError:
            return super().networks(labels)
        found = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("labels") or {}, dict):
                continue
            item_labels = item.get("labels") or {}
            if all(item_labels.get(k) == v for k, v in labels.items()) and item.get("name"):
                found.append({"Name": str(item["name"]), "Labels": item_labels})
        return found

    def reap_orphans(self, project: str) -> int:
        # podman 4.3 hazard: when `podman run -d -p` is killed mid-way (an agent crash, a
        # watchdog kill), its conmon can outlive a container podman no longer knows, holding
        # the published port; `podman rm -f` cannot reach it. Only conmons of this store
        # (their bundle lies under its graph root) and of this project's container names
        # (per device: the project name hashes the device id) with an id podman does not
        # know are ended: another store's or another device's are never touched.
        known = set(self.run(["ps", "-a", "-q", "--no-trunc"]).stdout.split())
        store = self.run(["info", "--format", "{{.Store.GraphRoot}}"]).stdout.strip()
        reaped = 0
        for pid, argv in _processes():
            if os.path.basename(argv[0]) != "conmon":
                continue
            cid, name, bundle = _option(argv, "-c"), _option(argv, "-n"), _option(argv, "-b")
            ours = name.startswith((f"{project}-", f"{project}_")) and store.startswith("/")
            if not cid or cid in known or not ours or not _under(bundle, store):
                continue
            log.warning("ending orphaned conmon %d of unknown container %s (%s)", pid, name, cid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                reaped += 1
        return reaped


def _object_name(name: str) -> str:
    """A network or volume name margo-lite derived: never something an engine reads as an
    option (a positional word)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", name):
        raise ComposeError(f"{name!r} is not a network or volume name", code="COMPOSE_INVALID")
    return name


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv:
            found.append((int(entry.name), argv))
    return found


def _under(path: str, folder: str) -> bool:
    return os.path.normpath(path or ".").startswith(folder.rstrip("/") + "/")


def _option(argv: Sequence[str], flag: str) -> str:
    for index, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[index + 1]
    return ""


class Docker(Engine):
    name = "docker"
    program = "docker"


ENGINES: dict[str, type[Engine]] = {"podman": Podman, "docker": Docker}
