"""The compose-project steps `composedoc.build` is made of, and names, labels and hashes.

Pure apart from reading the package folder: the compose file, its `.env` and its env files.
Interpolation is done here, not by the compose tool, so the policy gate judges exactly what
runs, the agent's own environment never leaks into a project, and all drivers see the same
document. Variables come from the package's `.env` file and the deployment's `ENV.NAME`
parameters (parameters win). Env files are inlined into `environment`. The order of the
steps (interpolate, overlays, fold and resolve, name) is `composedoc`'s.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from margo_lite import yamlload
from margo_lite.constants import (
    COMPONENT,
    COMPOSE_FILE_NAMES,
    DEPLOYMENT,
    MANAGED_BY,
    MANAGED_BY_VALUE,
)
from margo_lite.errors import ComposeError, MargoLiteError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FILE_BYTES = 1 << 20

DEVICE = "io.margo.device"
SERVICE = "io.margo.service"
CONFIG_HASH = "io.margo.config-hash"
OWNERSHIP_KEYS = (MANAGED_BY, DEVICE, DEPLOYMENT, COMPONENT)

_VAR = re.compile(r"\$(?:(\$)|\{([^{}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.DOTALL)
_SLUG = re.compile(r"[^a-z0-9]+")


def find_compose_file(package_dir: Path) -> Path:
    for name in COMPOSE_FILE_NAMES:
        candidate = package_dir / name
        if candidate.is_file():
            return candidate
    raise ComposeError(
        f"{package_dir}: no compose file ({', '.join(COMPOSE_FILE_NAMES)}) at its root"
    )


def load_project(
    package_dir: Path, env: Mapping[str, str], overlays: Mapping[str, Any]
) -> dict[str, Any]:
    """The canonical document of a package (see `composedoc.build`), without project names."""
    from margo_lite import composedoc  # composedoc builds on this module

    return composedoc.build(package_dir, env, overlays)


def read_compose(package_dir: Path) -> Any:
    """The package's compose file, parsed (with the YAML limits), not yet checked."""
    path = find_compose_file(package_dir)
    try:
        return yamlload.load_one(_read(path))
    except MargoLiteError as exc:
        raise ComposeError(f"{path.name}: {exc.message}") from None


def variables(package_dir: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Interpolation variables: the package's `.env`, then the ENV parameters (they win)."""
    found = dict(_read_dotenv(package_dir / ".env"))
    found.update(env)
    return found


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ComposeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ComposeError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; one level of quotes removed."""
    if not path.is_file():
        return {}
    values = {}
    try:
        text = _read(path).decode()
    except UnicodeDecodeError:
        raise ComposeError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise ComposeError(f"{path}: line {number}: expected NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def interpolate(value: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, variables, f"{where}: {k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, where) for v in value]
    if isinstance(value, str) and "$" in value:
        return _VAR.sub(lambda m: _substitute(m, variables, where), value)
    return value


def _substitute(match: re.Match, variables: Mapping[str, str], where: str) -> str:
    if match.group(1):
        return "$"
    if match.group(3):
        return variables.get(match.group(3), "")
    braced = _BRACED.match(match.group(2))
    if not braced:
        raise ComposeError(f"{where}: invalid interpolation '${{{match.group(2)}}}'")
    name, op, arg = braced.groups()
    value = variables.get(name)
    is_set = value is not None if op and not op.startswith(":") else bool(value)
    if op in (":-", "-"):
        return value if is_set else arg
    if op in (":?", "?"):
        if not is_set:
            raise ComposeError(f"{where}: required variable {name} is missing: {arg}")
        return value
    if op in (":+", "+"):
        return arg if is_set else ""
    return value or ""


def inline_environment(
    service: dict, name: str, package_dir: Path, variables: Mapping[str, str]
) -> None:
    """Env files inlined, environment and labels as mappings of strings."""
    where = f"services.{name}"
    environment: dict[str, str] = {}
    env_files = service.pop("env_file", None)
    for entry in [env_files] if isinstance(env_files, str | dict) else env_files or []:
        entry_path, required = (
            (entry.get("path"), entry.get("required", True))
            if isinstance(entry, dict)
            else (entry, True)
        )
        if not isinstance(entry_path, str):
            raise ComposeError(f"{where}.env_file: expected a path")
        file = _inside(package_dir, entry_path, f"{where}.env_file")
        if file.is_file():
            environment.update(_read_dotenv(file))
        elif required:
            raise ComposeError(f"{where}.env_file: {entry_path} is not in the package")
    for key, value in _pairs(service.get("environment"), f"{where}.environment"):
        if value is None:
            value = variables.get(key)
        if value is not None:
            environment[key] = value
    if environment or "environment" in service:
        service["environment"] = environment
    if "labels" in service:
        service["labels"] = {
            k: "" if v is None else v for k, v in _pairs(service["labels"], f"{where}.labels")
        }


def _pairs(value: Any, where: str) -> list[tuple[str, str | None]]:
    """A compose mapping given as a mapping or as a list of KEY=VALUE strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [(str(k), None if v is None else _scalar(v, where)) for k, v in value.items()]
    if isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, str):
                raise ComposeError(f"{where}: expected KEY=VALUE strings")
            key, sep, val = item.partition("=")
            pairs.append((key, val if sep else None))
        return pairs
    raise ComposeError(f"{where}: expected a mapping or a list")


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ComposeError(f"{where}: expected a string or number, got {type(value).__name__}")


def _inside(package_dir: Path, relative: str, where: str) -> Path:
    path = (package_dir / relative).resolve()
    if not path.is_relative_to(package_dir):
        raise ComposeError(f"{where}: {relative} is outside the package")
    return path


def service_order(doc: Mapping[str, Any]) -> list[str]:
    """Service names so that each comes after what it depends on (file order otherwise)."""
    services = doc["services"]
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise ComposeError(f"services: dependency cycle {' -> '.join((*chain, name))}")
        visiting.add(name)
        for dep in depends_on(services[name]):
            if dep not in services:
                raise ComposeError(f"services.{name}.depends_on: unknown service {dep!r}")
            visit(dep, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Dependency -> condition (service_started, service_healthy, ...)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    if isinstance(deps, dict):
        return {
            str(k): (v or {}).get("condition", "service_started") if isinstance(v, dict) else v
            for k, v in deps.items()
        }
    raise ComposeError("depends_on: expected a list or a mapping")


# --- names, ownership, hashes ----------------------------------------------------------------


def slug(text: str, limit: int) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")[:limit].strip("-")


def project_name(deployment_id: str, component: str, *, device: str) -> str:
    """A compose project name safe for every tool, unique per (device, deployment, component).

    Two devices served from one host may both run a deployment with the same id: the hash
    covers the device too. Container, network and volume names all start with it.
    """
    return _name(deployment_id, component, f"{device}\0{deployment_id}\0{component}")


def legacy_project_name(deployment_id: str, component: str) -> str:
    """The project name margo-lite used before names were per device (see decisions.md)."""
    return _name(deployment_id, component, f"{deployment_id}\0{component}")


def _name(deployment_id: str, component: str, hashed: str) -> str:
    """Readable parts cut short; a hash of the exact key keeps distinct keys apart,
    whatever their length or characters."""
    digest = hashlib.sha256(hashed.encode()).hexdigest()[:10]
    parts = [p for p in (slug(deployment_id, 12), slug(component, 16)) if p]
    return "-".join(["ml", *parts, digest])


def device_labels(device: str) -> dict[str, str]:
    """What every object of this device carries: listing by these finds only its own."""
    return {MANAGED_BY: MANAGED_BY_VALUE, DEVICE: device}


def ownership_labels(deployment_id: str, component: str, *, device: str) -> dict[str, str]:
    return {**device_labels(device), DEPLOYMENT: deployment_id, COMPONENT: component}


def with_ownership(
    doc: Mapping[str, Any], deployment_id: str, component: str, *, device: str
) -> dict[str, Any]:
    """A copy of `doc` whose services, default network and named volumes carry our labels.

    External volumes and networks are not ours: they get no labels and are never removed.
    """
    owned = ownership_labels(deployment_id, component, device=device)
    doc = copy.deepcopy(dict(doc))
    for name, service in doc["services"].items():
        service["labels"] = {**(service.get("labels") or {}), **owned, SERVICE: name}
    networks = doc.get("networks") or {}
    if not isinstance(networks, dict):
        raise ComposeError("networks: expected a mapping")
    doc["networks"] = networks
    networks.setdefault("default", {})
    for name, network in list(networks.items()):
        networks[name] = _owned(network, owned, f"networks.{name}")
    volumes = doc.get("volumes")
    if volumes is not None:
        if not isinstance(volumes, dict):
            raise ComposeError("volumes: expected a mapping")
        for name, volume in list(volumes.items()):
            volumes[name] = _owned(volume, owned, f"volumes.{name}")
    return doc


def _owned(definition: Any, owned: Mapping[str, str], where: str) -> dict:
    definition = dict(definition or {})
    if definition.get("external"):
        return definition
    labels = dict(_pairs(definition.get("labels"), f"{where}.labels"))
    definition["labels"] = {**labels, **owned}
    return definition


def config_hash(value: Any) -> str:
    """A stable hash of a service definition: equal definitions, equal hashes."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def dump(doc: Mapping[str, Any]) -> bytes:
    """The document as a compose file for an external tool: `$` escaped, since it is final."""
    return yaml.safe_dump(_escape(doc), sort_keys=False).encode()


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return value.replace("$", "$$")
    return value
