"""The local policy gate: what a compose file may ask of the device, decided by the device.

The Margo specification leaves room for a "policy agent" on the device. Here it is a
configuration section (`policy.*`) and one check over the final compose document (after
interpolation and overlays), before anything of the deployment runs. Everything that
reaches beyond a plain container is denied unless the configuration allows it:
privileged mode, the host's network / PID / IPC namespaces, added capabilities, device
access, and host paths outside `policy.allowed_bind_paths`.

Host paths are compared after normalisation (`..`, `.`, repeated slashes), and, when they
exist, after resolving symbolic links on the host too, so that a link planted below an
allowed folder (by an earlier container that could write there) cannot lead elsewhere.
Relative paths name files of the package itself and must not leave it. Host paths also
hide in named volumes (`driver_opts: {o: bind, device: ...}`), file-based secrets and
configs, env files and build contexts (all read from the host); those are checked too.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from margo_lite import composedoc
from margo_lite.config import PolicyConfig
from margo_lite.errors import ComposeError, PackageError, PolicyError
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Pending reason while a deployment's compose file goes through this check.
PENDING_REASON = "POLICY_CHECK"

_OFF = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class Violation:
    service: str
    rule: str  # the configuration key that would allow it
    detail: str

    def __str__(self) -> str:
        where = f"service {self.service!r}: " if self.service else ""
        return f"{where}{self.detail} (allow with {self.rule})"


def check_compose(
    compose: Mapping[str, Any],
    policy: PolicyConfig,
    *,
    package_dir: Path | None = None,
    realpath: Callable[[str], str] = os.path.realpath,
) -> None:
    """Raise PolicyError (POLICY_DENIED) naming each rule broken and its service.

    `package_dir` is the folder the document's relative paths were resolved in: bind
    mounts of it and below are allowed like `policy.allowed_bind_paths`."""
    found = violations(compose, policy, package_dir=package_dir, realpath=realpath)
    if found:
        raise PolicyError("; ".join(map(str, found)), rule=found[0].rule, service=found[0].service)


def violations(
    compose: Mapping[str, Any],
    policy: PolicyConfig,
    *,
    package_dir: Path | None = None,
    realpath: Callable[[str], str] = os.path.realpath,
) -> list[Violation]:
    """Every rule the compose document breaks, in service order."""
    services = compose.get("services") if isinstance(compose, Mapping) else None
    if not isinstance(services, Mapping):
        raise PackageError("compose file: 'services' is not a mapping", code="PACKAGE_INVALID")
    found: list[Violation] = []
    for name, service in services.items():
        if not isinstance(service, Mapping):
            raise PackageError(
                f"compose file: service {name!r} is not a mapping", code="PACKAGE_INVALID"
            )
        for rule, detail in _service_problems(service, compose, policy, realpath, package_dir):
            found.append(Violation(str(name), rule, detail))
    reported = {v.detail for v in found}
    for rule, detail in _declared_external(compose, policy):  # declared, used or not
        if detail not in reported:
            found.append(Violation("", rule, detail))
    return found


def _declared_external(
    compose: Mapping[str, Any], policy: PolicyConfig
) -> Iterator[tuple[str, str]]:
    """External volumes and networks the document declares that the policy does not list."""
    for section, rule, allowed in (
        ("volumes", "policy.allowed_external_volumes", policy.allowed_external_volumes),
        ("networks", "policy.allowed_external_networks", policy.allowed_external_networks),
    ):
        definitions = compose.get(section)
        for key, definition in (definitions if isinstance(definitions, Mapping) else {}).items():
            real = _external_name(definition, key)
            if real is None:
                continue
            if section == "networks" and _is_host(real):
                if not policy.allow_host_network:
                    yield "policy.allow_host_network", f"network {key!r} is the host network"
            elif str(real) not in allowed:
                yield rule, f"external {section[:-1]} {real!r}"


def _service_problems(
    service: Mapping[str, Any],
    compose: Mapping[str, Any],
    policy: PolicyConfig,
    realpath: Callable[[str], str],
    package_dir: Path | None,
) -> Iterator[tuple[str, str]]:
    if not policy.allow_privileged:
        if _on(service.get("privileged")):
            yield "policy.allow_privileged", "privileged mode"
        for key in ("userns_mode", "uts", "cgroup", "cgroupns_mode"):
            if _is_host(service.get(key)):
                yield "policy.allow_privileged", f"{key}: host"
        for option in _as_list(service.get("security_opt")):
            if _unconfined(option):
                yield "policy.allow_privileged", f"security_opt {option}"
    if not policy.allow_host_network:
        for key in ("network_mode", "net"):
            if _is_host(service.get(key)):
                yield "policy.allow_host_network", f"{key}: host"
        for network in _host_networks(service, compose):
            yield "policy.allow_host_network", f"network {network!r} is the host network"
    if _is_host(service.get("pid")) and not policy.allow_host_pid:
        yield "policy.allow_host_pid", "pid: host"
    if _is_host(service.get("ipc")) and not policy.allow_host_ipc:
        yield "policy.allow_host_ipc", "ipc: host"
    allowed_caps = {_capability(c) for c in policy.allowed_capabilities}
    for cap in _as_list(service.get("cap_add")):
        if _capability(cap) not in allowed_caps:
            yield "policy.allowed_capabilities", f"cap_add {cap}"
    if not policy.allow_devices:
        for detail in _device_requests(service):
            yield "policy.allow_devices", detail
    allowed = policy.allowed_bind_paths + ((str(package_dir),) if package_dir else ())
    for source, how in _host_paths(service, compose):
        if not _path_allowed(source, allowed, realpath):
            yield "policy.allowed_bind_paths", f"{how} of host path {source!r}"
    yield from _external(service, compose, policy)


def _external_name(definition: Any, key: str) -> Any:
    """The engine's name of an external volume or network (`name`, or the older
    `external.name`, else its key); None when the definition is not external."""
    if not (isinstance(definition, Mapping) and _on(definition.get("external"))):
        return None
    external = definition.get("external")
    real = definition.get("name", key)
    if isinstance(external, Mapping):
        real = external.get("name", real)
    return real


def _on(value: Any) -> bool:
    """Deny by default: anything but an explicit false counts as set."""
    if value is None or value is False:
        return False
    return str(value).strip().lower() not in _OFF


def _unconfined(option: Any) -> bool:
    """Any security option but `no-new-privileges` may lift confinement (seccomp, AppArmor
    or SELinux off, or a custom profile from a host file): it counts as privilege."""
    text = str(option).strip().lower().replace(":", "=")
    return text not in ("no-new-privileges", "no-new-privileges=true")


def _is_host(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "host"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _capability(value: Any) -> str:
    text = str(value).strip().upper()
    return text.removeprefix("CAP_")


def _host_networks(service: Mapping[str, Any], compose: Mapping[str, Any]) -> Iterator[str]:
    """Networks of the service that are the host's own (driver host, or external "host")."""
    networks = service.get("networks")
    names = list(networks) if isinstance(networks, Mapping) else _as_list(networks)
    definitions = compose.get("networks")
    definitions = definitions if isinstance(definitions, Mapping) else {}
    for name in names:
        definition = definitions.get(name)
        definition = definition if isinstance(definition, Mapping) else {}
        external = definition.get("external")
        real = definition.get("name", name)
        if isinstance(external, Mapping):  # the old form: external: {name: ...}
            real = external.get("name", real)
        if _is_host(definition.get("driver")) or (_on(external) and _is_host(real)):
            yield str(name)


def _device_requests(service: Mapping[str, Any]) -> Iterator[str]:
    for device in _as_list(service.get("devices")):
        yield f"device {device}"
    if _as_list(service.get("device_cgroup_rules")):
        yield "device_cgroup_rules"
    if service.get("gpus"):
        yield "gpus"
    deploy = service.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, Mapping) else None
    reservations = resources.get("reservations") if isinstance(resources, Mapping) else None
    if isinstance(reservations, Mapping) and reservations.get("devices"):
        yield "deploy.resources.reservations.devices"


def _mounts(service: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The service's mounts in long syntax; a shape not understood is refused, never skipped."""
    for index, entry in enumerate(_as_list(service.get("volumes"))):
        if isinstance(entry, str):  # a document not (yet) canonical: fold it the same way
            entry = composedoc.short_syntax_mount(entry, f"volumes.{index}")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("source", ""), str):
            raise ComposeError(f"volumes.{index}: not a mount", code=composedoc.CODE)
        yield entry


def _host_paths(
    service: Mapping[str, Any], compose: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    """(host path, how it is used) for every way the service reaches into the host's files."""
    volumes = compose.get("volumes")
    volumes = volumes if isinstance(volumes, Mapping) else {}
    for entry in _mounts(service):
        kind = entry.get("type")
        source = entry.get("source", entry.get("src"))
        if not source:
            continue
        if kind == "bind" or (kind is None and composedoc.is_path(source)):
            yield source, "bind mount"
        elif composedoc.is_path(source):  # a named volume that is a host path
            yield source, f"{kind or 'volume'} mount"
        else:
            yield from _volume_paths(source, volumes)
    for env_file in _as_list(service.get("env_file")):
        path = env_file.get("path") if isinstance(env_file, Mapping) else env_file
        if isinstance(path, str):
            yield path, "env_file"
    build = service.get("build")
    context = build.get("context", ".") if isinstance(build, Mapping) else build
    if isinstance(context, str) and "://" not in context:
        yield context, "build context"
    for section in ("secrets", "configs"):
        definitions = compose.get(section)
        definitions = definitions if isinstance(definitions, Mapping) else {}
        for ref in _as_list(service.get(section)):
            name = ref.get("source") if isinstance(ref, Mapping) else ref
            definition = definitions.get(name) if isinstance(name, str) else None
            if isinstance(definition, Mapping) and isinstance(definition.get("file"), str):
                yield definition["file"], f"{section[:-1]} {name!r} read from a file"


def _external(
    service: Mapping[str, Any], compose: Mapping[str, Any], policy: PolicyConfig
) -> Iterator[tuple[str, str]]:
    """External volumes and networks the service uses that the policy does not list."""
    volumes = compose.get("volumes")
    volumes = volumes if isinstance(volumes, Mapping) else {}
    for entry in _mounts(service):
        definition = volumes.get(entry.get("source")) if entry.get("type") != "bind" else None
        if isinstance(definition, Mapping) and _on(definition.get("external")):
            real = str(definition.get("name") or entry.get("source"))
            if real not in policy.allowed_external_volumes:
                yield "policy.allowed_external_volumes", f"external volume {real!r}"
    definitions = compose.get("networks")
    definitions = definitions if isinstance(definitions, Mapping) else {}
    networks = service.get("networks")
    names = list(networks) if isinstance(networks, Mapping) else _as_list(networks)
    for name in names or ["default"]:
        real = _external_name(definitions.get(name), name)
        if real is None:
            continue
        if not _is_host(real) and str(real) not in policy.allowed_external_networks:
            yield "policy.allowed_external_networks", f"external network {real!r}"


def _volume_paths(name: str, volumes: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """A named volume of the local driver can be a bind mount in disguise."""
    definition = volumes.get(name)
    options = definition.get("driver_opts") if isinstance(definition, Mapping) else None
    if not isinstance(options, Mapping):
        return
    flags = {flag.strip() for flag in str(options.get("o", "")).split(",")}
    device = options.get("device")
    if flags & {"bind", "rbind"} and isinstance(device, str):
        yield device, f"volume {name!r} bound to a host folder"


def _normalize(path: str) -> str:
    """Absolute, without `.`, `..` or repeated slashes (`..` cannot climb above `/`)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _inside(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder + "/")


def _path_allowed(source: str, allowed: tuple[str, ...], realpath: Callable[[str], str]) -> bool:
    if source.startswith("~"):  # a home folder on the host: never part of the package
        return False
    if not source.startswith("/"):  # relative: inside the package, the compose project
        norm = posixpath.normpath(source)
        return norm != ".." and not norm.startswith("../")
    path = _normalize(source)
    resolved = _normalize(realpath(path))
    for folder in allowed:
        base = _normalize(folder)
        if _inside(path, base) and _inside(resolved, _normalize(realpath(base))):
            return True
    return False
