"""The canonical compose document of a component: built once, checked, run, recorded.

`build` turns a package folder plus a deployment's parameters into one document of plain
JSON types (dict with string keys, list, str, int, float, bool, None) in one normalised
form: the policy gate judges exactly this object, every driver renders its argv or its
file from it and nothing else, the component digest covers it, and the backend records it
to restore it later. Anything else (a YAML date, a tuple, a mapping proxy, a non-string
key, an unknown mount option) is refused with `COMPOSE_INVALID` naming its path, so no
later step can meet a shape it does not recognise.

Folded into one form: volumes into long syntax (`type`, `source`, `target`, `read_only`,
per-type options); ports into short strings; environment and labels into string maps.
Relative bind sources are resolved here, inside the package folder, never against the
agent's working folder. Names the engine creates (networks, volumes) are derived from the
project name; a document may not choose them, nor container names.
"""

from __future__ import annotations

import copy
import posixpath
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from margo_lite import imageref, pointer
from margo_lite.backends import project
from margo_lite.jsonvalue import CODE, digest, fail, plain  # noqa: F401 (one place to import)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PORT = re.compile(
    r"(?:(?:\[[0-9a-fA-F:.]+\]|[0-9.]{7,15}):)?(?:[0-9]{0,5}(?:-[0-9]{1,5})?:)?"
    r"[0-9]{1,5}(?:-[0-9]{1,5})?(?:/(?:tcp|udp|sctp))?"
)
_PORT_KEYS = {"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"}
MOUNT_TYPES = ("bind", "volume", "tmpfs")
MOUNT_KEYS = {"type", "source", "target", "read_only", "consistency", *MOUNT_TYPES}
MOUNT_OPTIONS = {
    "bind": {"propagation", "create_host_path", "selinux"},
    "volume": {"nocopy", "subpath"},
    "tmpfs": {"size", "mode"},
}
#: Top-level keys that make a compose tool read other files than the one checked.
FOREIGN_TOP_LEVEL = ("include",)
OWN_LABELS = "io.margo."
_PROPAGATION = {"rprivate", "private", "rshared", "shared", "rslave", "slave"}


# --- the pipeline ----------------------------------------------------------------------------


def build(
    package_dir: Path,
    env: Mapping[str, str],
    overlays: Mapping[str, Any],
    *,
    deployment_id: str | None = None,
    component: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The canonical document of a package with its parameters (see the module docstring).

    With `deployment_id`, `component` and `device`, names are derived from the device's
    project and the ownership labels are set: the document as it will run.
    """
    package_dir = Path(package_dir).resolve()
    raw = project.read_compose(package_dir)
    document = plain(raw)
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise fail("", "expected a mapping with a 'services' mapping")
    variables = project.variables(package_dir, env)
    document = project.interpolate(document, variables, project.find_compose_file(package_dir).name)
    document = pointer.apply(document, {k: plain(v, k) for k, v in overlays.items()})
    document = normalize(document, package_dir, variables)
    if deployment_id is not None and component is not None and device is not None:
        name = project.project_name(deployment_id, component, device=device)
        document = project.with_ownership(
            name_objects(document, name), deployment_id, component, device=device
        )
    return _key_order(plain(document))


def _key_order(value: Any) -> Any:
    """Mappings with sorted keys, as the record store writes them: the document restored
    from its record renders the very argv (and config hashes) it was installed with."""
    if isinstance(value, dict):
        return {key: _key_order(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_key_order(item) for item in value]
    return value


def normalize(
    document: dict[str, Any], package_dir: Path, variables: Mapping[str, str]
) -> dict[str, Any]:
    """Every service in one form; relative paths resolved inside `package_dir`."""
    document = copy.deepcopy(document)
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        raise fail("services", "expected a mapping of at least one service")
    for key in FOREIGN_TOP_LEVEL:
        if key in document:
            raise fail(key, "reads compose files beside this one; not supported")
    for key in ("networks", "volumes"):
        for item, definition in _mapping(document.get(key), key).items():
            _own_labels(_mapping(definition, f"{key}.{item}").get("labels"), f"{key}.{item}")
    declared = _mapping(document.get("volumes"), "volumes")
    for key in ("networks", "volumes"):
        for name in _mapping(document.get(key), key):
            _name(name, f"{key}.{name}")
    for name, service in services.items():
        where = f"services.{name}"
        _name(name, where)
        if not isinstance(service, dict):
            raise fail(where, "expected a mapping")
        project.inline_environment(service, name, package_dir, variables)
        _outside_names(service, where)
        if "image" in service:
            imageref.check(service["image"], f"{where}.image")
        for key in ("command", "entrypoint"):
            if isinstance(service.get(key), str):
                try:  # every driver splits a string the shell's way
                    shlex.split(service[key])
                except ValueError as exc:
                    raise fail(f"{where}.{key}", f"{exc} (quotes do not pair up)") from None
        if "volumes" in service:
            mounts = service["volumes"]
            if not isinstance(mounts, list):
                raise fail(f"{where}.volumes", "expected a list")
            service["volumes"] = [
                mount(m, f"{where}.volumes.{i}", package_dir, declared)
                for i, m in enumerate(mounts)
            ]
        if "ports" in service:
            ports = service["ports"]
            if not isinstance(ports, list):
                raise fail(f"{where}.ports", "expected a list")
            service["ports"] = [port(p, f"{where}.ports.{i}") for i, p in enumerate(ports)]
        project.depends_on(service)
    project.service_order(document)
    return document


def _outside_names(service: dict[str, Any], where: str) -> None:
    """Refuse what names something outside the project: a container name, another
    container's namespaces or volumes, another compose file, our own labels."""
    if "container_name" in service:
        raise fail(f"{where}.container_name", "container names are derived from the project")
    for key in ("extends", "external_links"):
        if key in service:
            raise fail(f"{where}.{key}", "reaches outside the package's project; not supported")
    for key in ("network_mode", "pid", "ipc", "cgroup", "userns_mode", "uts"):
        value = service.get(key)
        if isinstance(value, str) and value.strip().lower().startswith("container:"):
            raise fail(f"{where}.{key}", f"{value[:80]!r}: another container's namespace")
    for index, entry in enumerate(service.get("volumes_from") or []):
        if not isinstance(entry, str) or entry.startswith("container:"):
            raise fail(f"{where}.volumes_from.{index}", "only services of the project")
    _own_labels(service.get("labels"), where)


def _own_labels(labels: Any, where: str) -> None:
    keys = labels if isinstance(labels, dict) else [str(i).split("=", 1)[0] for i in labels or []]
    for key in keys:
        if str(key).startswith(OWN_LABELS):
            raise fail(f"{where}.labels.{key}", "labels of margo-lite itself are set by it")


def name_objects(document: dict[str, Any], name: str) -> dict[str, Any]:
    """Networks and volumes named `<project>_<key>`; a document may not name them itself.

    An external volume or network keeps its own name (the policy decides whether it may
    be used); it must still be a plain object name, never a host path.
    """
    document = copy.deepcopy(document)
    networks = _mapping(document.get("networks"), "networks")
    networks.setdefault("default", None)
    document["networks"] = networks
    for key in ("networks", "volumes"):
        section = _mapping(document.get(key), key)
        for item, definition in list(section.items()):
            where = f"{key}.{item}"
            definition = _mapping(definition, where)
            derived = f"{name}_{item}"
            given = definition.get("name")
            external = definition.get("external")
            if isinstance(external, dict):  # the old form: external: {name: ...}
                given = external.get("name", given)
                definition["external"] = external = True
            if external not in (None, False, True):
                raise fail(f"{where}.external", "expected true or false")
            if external:
                real = item if given is None else given
                if not isinstance(real, str) or not NAME.fullmatch(real):
                    raise fail(f"{where}.name", f"{real!r} is not a {key[:-1]} name")
                definition["name"] = real
            elif given is not None and given != derived:
                raise fail(
                    f"{where}.name",
                    f"{given!r}: names are derived from the project ({derived!r})",
                )
            else:
                definition["name"] = derived
            section[item] = definition
        if section or key in document:
            document[key] = section
    document["name"] = name
    return document


# --- one mount, one port ---------------------------------------------------------------------


def mount(value: Any, where: str, package_dir: Path, declared: Mapping[str, Any]) -> dict:
    """A volume entry in long syntax, its bind source absolute inside or outside the package."""
    if isinstance(value, str):
        value = short_syntax_mount(value, where)
    if not isinstance(value, dict):
        raise fail(where, "expected a string or a mapping")
    unknown = set(value) - MOUNT_KEYS
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "not a mount key")
    result = dict(value)
    source = result.get("source")
    if "source" in result and not isinstance(source, str):
        raise fail(f"{where}.source", "expected a string")
    kind = result.get("type")
    if kind is None:
        kind = "bind" if isinstance(source, str) and is_path(source) else "volume"
    if kind not in MOUNT_TYPES:
        raise fail(f"{where}.type", f"{kind!r} is not one of {', '.join(MOUNT_TYPES)}")
    result["type"] = kind
    target = result.get("target")
    if not isinstance(target, str) or not target.startswith("/"):
        raise fail(f"{where}.target", "expected an absolute path in the container")
    if not isinstance(result.get("read_only", False), bool):
        raise fail(f"{where}.read_only", "expected true or false")
    for option in MOUNT_TYPES:
        if option in result:
            if option != kind:
                raise fail(f"{where}.{option}", f"options of a {option} mount on a {kind} mount")
            options = _mapping(result[option], f"{where}.{option}")
            bad = set(options) - MOUNT_OPTIONS[option]
            if bad:
                raise fail(f"{where}.{option}.{sorted(bad)[0]}", "not a mount option")
    if kind == "bind":
        if not source:
            raise fail(f"{where}.source", "a bind mount needs a host path")
        result["source"] = _host_path(source, package_dir)
    elif kind == "volume" and source is not None:
        if is_path(source) or not NAME.fullmatch(source):
            raise fail(
                f"{where}.source", f"{source!r} is a host path or no name, not a named volume"
            )
        if source not in declared:
            raise fail(f"{where}.source", f"volume {source!r} is not declared in volumes")
    elif kind == "tmpfs" and source is not None:
        raise fail(f"{where}.source", "a tmpfs mount has no source")
    return result


def short_syntax_mount(text: str, where: str) -> dict:
    parts = text.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": text}
    if len(parts) > 3 or not parts[0]:
        raise fail(where, f"{text!r} is not SOURCE:TARGET[:OPTIONS]")
    result: dict[str, Any] = {"source": parts[0], "target": parts[1]}
    for option in parts[2].split(",") if len(parts) == 3 else []:
        if option in ("ro", "rw"):
            result["read_only"] = option == "ro"
        elif option in ("z", "Z"):
            result.setdefault("bind", {})["selinux"] = option
        elif option in _PROPAGATION:
            result.setdefault("bind", {})["propagation"] = option
        elif option == "nocopy":
            result.setdefault("volume", {})["nocopy"] = True
        else:
            raise fail(where, f"{option!r} is not a volume option")
    if is_path(parts[0]):
        result["type"] = "bind"
        result.setdefault("bind", {})["create_host_path"] = True
    else:
        result["type"] = "volume"
        result.pop("bind", None)
    return result


def is_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "/" in source


def _host_path(source: str, package_dir: Path) -> str:
    """An absolute host path; a relative one is resolved against the package folder
    (`..` may lead out of it: the policy gate judges where it ends)."""
    if source.startswith("~"):
        return source  # a home folder: the policy gate refuses it, nothing resolves it
    if source.startswith("/"):
        return "/" + posixpath.normpath(source).lstrip("/")
    return posixpath.normpath(posixpath.join(str(package_dir), source))


def port(value: Any, where: str) -> str:
    """A port in the short form `[host_ip:][published:]target[/protocol]`."""
    if isinstance(value, bool):
        raise fail(where, "expected a port")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        unknown = set(value) - _PORT_KEYS
        if unknown:
            raise fail(f"{where}.{sorted(unknown)[0]}", "not a port key")
        if value.get("mode", "ingress") not in ("ingress", "host"):
            raise fail(f"{where}.mode", "expected ingress or host")
        parts = [value.get("host_ip"), value.get("published"), value.get("target")]
        if parts[2] is None:
            raise fail(f"{where}.target", "required")
        if any(
            p is not None and (isinstance(p, bool) or not isinstance(p, str | int)) for p in parts
        ):
            raise fail(where, "expected strings or numbers")
        text = ":".join(
            str(p) for p in (parts if parts[0] is not None else parts[1:]) if p is not None
        )
        if parts[0] is not None and parts[1] is None:
            text = f"{parts[0]}::{parts[2]}"
        if value.get("protocol") is not None:
            text += f"/{value['protocol']}"
    else:
        raise fail(where, "expected a string, a number or a mapping")
    if not _PORT.fullmatch(text):
        raise fail(where, f"{text[:80]!r} is not [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]")
    return text


def short_mount(value: Mapping[str, Any]) -> str | None:
    """The short form of a canonical mount, when it has one (for external compose tools,
    some of which do not create missing bind sources in long syntax)."""
    kind, source, target = value["type"], value.get("source"), value["target"]
    options = dict(value.get(kind) or {})
    if kind == "tmpfs" or set(value) - {"type", "source", "target", "read_only", kind}:
        return None
    flags = ["ro"] if value.get("read_only") else []
    if kind == "bind":
        if options.pop("create_host_path", None) is not True:
            return None
        flags += [options.pop(k) for k in ("selinux", "propagation") if k in options]
    elif options.pop("nocopy", False):
        flags.append("nocopy")
    if options:
        return None
    if source is None:
        return None if flags else target
    return ":".join([source, target, *([",".join(flags)] if flags else [])])


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, "expected a mapping")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise fail(where, f"{value!r} is not a name (letters, digits, '.', '_', '-')")
    return value


def tool_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical document as an external compose tool gets it: mounts in short syntax
    where they have one (docker-compose v1 does not create a missing bind source given in
    long syntax), no top-level name. Rendered from the canonical object only."""
    result = copy.deepcopy(dict(document))
    result.pop("name", None)  # the tools get it as -p; docker-compose v1 refuses the key
    for service in result.get("services", {}).values():
        if isinstance(service.get("volumes"), list):
            service["volumes"] = [
                (short_mount(m) or m) if isinstance(m, dict) else m for m in service["volumes"]
            ]
    return result


def _is_word(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)
