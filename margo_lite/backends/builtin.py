"""The built-in compose driver: the common compose subset, straight through the engine's CLI.

For gateways with no compose tool at all. It supports image, command, entrypoint,
environment, env_file, ports, volumes (named and bind), restart, depends_on (order),
labels, the project's default network, healthcheck, plus working_dir, user, hostname,
stop_grace_period and stop_signal. Any other key is refused with its name, never
ignored: running an application differently from its file would be worse than not at all.

Each container carries a hash of its service's definition; `up` keeps a running container
whose hash still matches and recreates the others, so an update touches only what changed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from margo_lite import imageref, logs, schedule
from margo_lite.backends import project
from margo_lite.backends.compose import Driver
from margo_lite.backends.engine import Container
from margo_lite.errors import ComposeError, EngineError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

TOP_LEVEL_KEYS = {"version", "name", "services", "networks", "volumes"}
SERVICE_KEYS = {
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "restart",
    "depends_on",
    "labels",
    "networks",
    "healthcheck",
    "working_dir",
    "user",
    "hostname",
    "stop_grace_period",
    "stop_signal",
}
NETWORK_KEYS = {"labels", "driver", "name"}
VOLUME_KEYS = {"labels", "driver", "name", "external"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}
PORT_KEYS = {"target", "published", "host_ip", "protocol", "mode"}
MOUNT_KEYS = {"type", "source", "target", "read_only", "bind", "volume"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
#: The engine's answer to a network create whose name exists (podman, docker).
_TAKEN = re.compile(r"already (exists|used|in use)", re.I)


def check_supported(doc: Mapping[str, Any]) -> None:
    """Refuse, by name, every key this driver would otherwise have to ignore."""

    def refuse(where: str) -> None:
        raise ComposeError(
            f"{where}: not supported by the built-in compose driver "
            "(install a compose tool, or remove the key)",
            code="COMPOSE_UNSUPPORTED_KEY",
        )

    def check(mapping: Any, allowed: set[str], where: str) -> None:
        if mapping is None:
            return
        if not isinstance(mapping, dict):
            raise ComposeError(f"{where}: expected a mapping")
        for key in mapping:
            if key not in allowed and not str(key).startswith("x-"):
                refuse(f"{where}.{key}" if where else str(key))

    check(doc, TOP_LEVEL_KEYS, "")
    for name, network in (doc.get("networks") or {}).items():
        if name != "default":
            refuse(f"networks.{name}")
        check(network, NETWORK_KEYS, f"networks.{name}")
        if (network or {}).get("driver", "bridge") != "bridge":
            refuse(f"networks.{name}.driver")
    for name, volume in (doc.get("volumes") or {}).items():
        check(volume, VOLUME_KEYS, f"volumes.{name}")
        if (volume or {}).get("driver", "local") != "local":
            refuse(f"volumes.{name}.driver")
    for name, service in doc["services"].items():
        where = f"services.{name}"
        check(service, SERVICE_KEYS, where)
        if "image" not in service:
            raise ComposeError(f"{where}.image: required by the built-in compose driver")
        check(service.get("healthcheck"), HEALTHCHECK_KEYS, f"{where}.healthcheck")
        networks = service.get("networks")
        if networks is not None and list(networks) != ["default"]:
            refuse(f"{where}.networks")
        if isinstance(networks, dict) and networks.get("default"):
            refuse(f"{where}.networks.default")
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                check(port, PORT_KEYS, f"{where}.ports")
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                check(volume, MOUNT_KEYS, f"{where}.volumes")
                if volume.get("type") not in ("bind", "volume"):
                    refuse(f"{where}.volumes.type")
        restart = str(service.get("restart", "no")).split(":")[0]
        if restart not in RESTART:
            raise ComposeError(f"{where}.restart: unknown policy {service['restart']!r}")


def network_name(name: str, doc: Mapping[str, Any]) -> str:
    """The canonical document's name for its default network (derived from the project)."""
    default = (doc.get("networks") or {}).get("default") or {}
    return default.get("name") or f"{name}_default"


def volume_name(name: str, doc: Mapping[str, Any], volume: str) -> str:
    """The canonical document's name for a declared volume (derived unless external)."""
    definition = (doc.get("volumes") or {}).get(volume) or {}
    return definition.get("name") or f"{name}_{volume}"


def container_name(name: str, service: str) -> str:
    return f"{name}-{project.slug(service, 40) or 'service'}-1"


class BuiltinDriver(Driver):
    name = "builtin"

    def available(self) -> bool:
        return True

    def check(self, doc: Mapping[str, Any]) -> None:
        check_supported(doc)

    def up(
        self,
        name: str,
        doc: Mapping[str, Any],
        workdir: Path,
        current: Sequence[Container] | None = None,
    ) -> None:
        check_supported(doc)
        owned = {
            k: v
            for k, v in (doc["networks"]["default"].get("labels") or {}).items()
            if k in project.OWNERSHIP_KEYS
        }
        if set(owned) != set(project.OWNERSHIP_KEYS):
            raise ComposeError("the document carries no ownership labels")
        self._ensure_network(
            network_name(name, doc), owned, doc, fresh=current is not None and not current
        )
        volumes = doc.get("volumes") or {}
        existing_volumes = {v["Name"] for v in self.engine.volumes(owned)} if volumes else set()
        for volume, definition in volumes.items():
            definition = definition or {}
            real = volume_name(name, doc, volume)
            if not definition.get("external") and real not in existing_volumes:
                self.engine.create_volume(real, definition.get("labels") or {})

        by_service: dict[str, list] = {}
        listed = self.engine.containers(owned) if current is None else current
        for container in listed:
            by_service.setdefault(container.labels.get(project.SERVICE, ""), []).append(container)
        for service in list(by_service):
            if service not in doc["services"]:
                for container in by_service.pop(service):
                    log.info("%s: removing %s (service gone)", name, container.name)
                    self.engine.remove_container(container.id)

        for service in project.service_order(doc):
            argv = self.run_argv(name, doc, service)
            wanted = project.config_hash(argv)
            keep = [
                c
                for c in by_service.get(service, [])
                if c.labels.get(project.CONFIG_HASH) == wanted and c.status == "running"
            ]
            for container in by_service.get(service, []):
                if container not in keep[:1]:
                    log.info("%s: removing %s (%s)", name, container.name, container.status)
                    self.engine.remove_container(container.id)
            if keep:
                continue
            log.info("%s: starting service %s", name, service)
            self.engine.run(
                ["run", "-d", f"--label={project.CONFIG_HASH}={wanted}", *argv],
                what=f"start service {service} of {name}",
            )

    def _ensure_network(
        self, network: str, owned: Mapping[str, str], doc: Mapping[str, Any], *, fresh: bool
    ) -> None:
        """Create the project's network unless one carrying its ownership labels exists.

        A project with no container (`fresh`: an install) most likely has no network yet:
        the create comes first, and only a name taken sends it to the listing, where a
        network without the labels is never used (the create's own error is raised)."""
        labels = doc["networks"]["default"].get("labels") or {}
        if not fresh:
            if not any(n["Name"] == network for n in self.engine.networks(owned)):
                self.engine.create_network(network, labels)
            return
        try:
            self.engine.create_network(network, labels)
        except EngineError as exc:
            if not _TAKEN.search(exc.stderr) or exc.code == "ENGINE_UNAVAILABLE":
                raise
            if not any(n["Name"] == network for n in self.engine.networks(owned)):
                raise

    def run_argv(self, name: str, doc: Mapping[str, Any], service: str) -> list[str]:
        """The engine's `run -d` arguments (after `run -d`) for one service.

        Every value from the document is joined to its flag (`--flag=value`) or comes after
        the image, which is checked against the reference grammar: nothing a document holds
        can stand in an option position."""
        spec = doc["services"][service]
        where = f"services.{service}"
        argv = [f"--name={container_name(name, service)}"]
        argv += [f"--network={network_name(name, doc)}", f"--network-alias={service}"]
        for key, value in (spec.get("labels") or {}).items():
            argv.append(f"--label={key}={value}")
        for key, value in (spec.get("environment") or {}).items():
            argv.append(f"--env={key}={value}")
        for port in spec.get("ports") or []:
            argv.append(f"--publish={_port(port, where)}")
        for volume in spec.get("volumes") or []:
            argv.append(f"--volume={_mount(volume, name, doc, where)}")
        restart = spec.get("restart")
        if restart:
            argv.append(f"--restart={restart}")
        for key, flag in (("working_dir", "--workdir"), ("user", "--user")):
            if spec.get(key) is not None:
                argv.append(f"{flag}={spec[key]}")
        if spec.get("hostname"):
            argv.append(f"--hostname={spec['hostname']}")
        if spec.get("stop_signal"):
            argv.append(f"--stop-signal={spec['stop_signal']}")
        if spec.get("stop_grace_period") is not None:
            seconds = _seconds(spec["stop_grace_period"], f"{where}.stop_grace_period")
            argv.append(f"--stop-timeout={max(0, round(seconds))}")
        argv += _healthcheck(spec.get("healthcheck"), f"{where}.healthcheck")
        command = _words(spec.get("command"), f"{where}.command")
        entrypoint = _words(spec.get("entrypoint"), f"{where}.entrypoint")
        if entrypoint is not None:
            if entrypoint:
                argv.append(f"--entrypoint={entrypoint[0]}")
                command = [*entrypoint[1:], *(command or [])]
            else:
                argv.append("--entrypoint=")
        image = imageref.check(spec.get("image"), f"{where}.image")
        return [*argv, image, *(command or [])]


def _words(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ComposeError(f"{where}: {exc}") from None
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ComposeError(f"{where}: expected a string or a list")


def _seconds(value: Any, where: str) -> float:
    try:
        return schedule.parse_duration(value)
    except ValueError as exc:
        raise ComposeError(f"{where}: {exc}") from None


def _port(port: Any, where: str) -> str:
    if isinstance(port, int | str):
        return str(port)
    if isinstance(port, dict) and "target" in port:
        text = str(port["target"])
        if port.get("published") is not None:
            text = f"{port['published']}:{text}"
            if port.get("host_ip"):
                text = f"{port['host_ip']}:{text}"
        if port.get("protocol"):
            text = f"{text}/{port['protocol']}"
        return text
    raise ComposeError(f"{where}.ports: expected a string, a number or a mapping with target")


def _mount(volume: Any, name: str, doc: Mapping[str, Any], where: str) -> str:
    """`--volume` text of a canonical mount (long syntax, bind sources absolute)."""
    if isinstance(volume, str):  # a document recorded before canonical documents (a rollback)
        from margo_lite import composedoc  # late: the start's sweep reads no compose document

        volume = composedoc.short_syntax_mount(volume, f"{where}.volumes")
    if not isinstance(volume, dict) or volume.get("type") not in ("bind", "volume"):
        raise ComposeError(f"{where}.volumes: expected a canonical bind or volume mount")
    source = volume.get("source")
    if volume["type"] == "volume" and source:
        source = volume_name(name, doc, source)
    elif volume["type"] == "bind" and not str(source).startswith("/"):
        raise ComposeError(f"{where}.volumes: bind source {source!r} is not an absolute path")
    options = [] if not volume.get("read_only") else ["ro"]
    extra = volume.get(volume["type"]) or {}
    options += [str(extra[k]) for k in ("selinux", "propagation") if extra.get(k)]
    if extra.get("nocopy"):
        options.append("nocopy")
    text = f"{source}:{volume['target']}" if source else str(volume["target"])
    return f"{text}:{','.join(options)}" if options else text


def _healthcheck(check: Any, where: str) -> list[str]:
    if not check:
        return []
    if check.get("disable"):
        return ["--no-healthcheck"]
    test = check.get("test")
    argv = []
    if test is not None:
        if isinstance(test, str):
            command = test
        elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
            command = " ".join(test[1:]) if test[0] == "CMD-SHELL" else shlex.join(test[1:])
        elif isinstance(test, list) and test == ["NONE"]:
            return ["--no-healthcheck"]
        else:
            raise ComposeError(f"{where}.test: expected a string or [CMD, ...] / [CMD-SHELL, ...]")
        argv.append(f"--health-cmd={command}")
    for key, flag in (
        ("interval", "--health-interval"),
        ("timeout", "--health-timeout"),
        ("start_period", "--health-start-period"),
    ):
        if check.get(key) is not None:
            argv.append(f"{flag}={_seconds(check[key], f'{where}.{key}'):g}s")
    if check.get("retries") is not None:
        argv.append(f"--health-retries={int(check['retries'])}")
    return argv
