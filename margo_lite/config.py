"""The agent's configuration: one YAML file, checked strictly, turned into frozen values.

Every section is a frozen dataclass; every field names its parser and a one-line doc in
its metadata. Loose input ("5m", "06:00-22:00", relative paths) is converted once, here,
so nothing downstream parses strings again. A mistake produces one `ConfigError` naming
the file and the dotted key; unknown keys are mistakes too, because a typo in a key
would otherwise silently leave a default in force.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from margo_lite import schedule, yamlload
from margo_lite.errors import ConfigError, MargoLiteError
from margo_lite.proxy import Proxy, Rule, parse_proxy_url, parse_rule

DEFAULT_PATH = "/etc/margo-lite/config.yaml"
ENV_VAR = "MARGO_LITE_CONFIG"
MAX_CONFIG_BYTES = 1 << 20

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIZE = re.compile(r"^(\d+)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class _Context:
    """What a parser may need beyond the value: where relative paths start."""

    base_dir: Path


Parser = Callable[[Any, _Context], Any]


# --- parsers: raise ValueError with a message; the loader adds file and key -----------------


def string(value: Any, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def nonempty(value: Any, ctx: _Context) -> str:
    if not string(value, ctx).strip():
        raise ValueError("must not be empty")
    return value


def boolean(value: Any, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def duration(value: Any, ctx: _Context) -> float:
    return schedule.parse_duration(value)


def positive_duration(value: Any, ctx: _Context) -> float:
    seconds = schedule.parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def size(value: Any, ctx: _Context) -> int:
    """Bytes from an integer or "512MiB", "2G", "64k"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {_kind(value)}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"bad size {value!r} (use bytes, or a string like 64KiB, 512MiB, 2GiB)")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _SIZE_FACTORS[unit]


def positive_int(value: Any, ctx: _Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number above zero, got {value!r}")
    return value


def fraction(value: Any, ctx: _Context) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def file_path(value: Any, ctx: _Context) -> str:
    """A file or folder; relative paths start at the configuration file's folder."""
    p = Path(nonempty(value, ctx))
    return str(p if p.is_absolute() else ctx.base_dir / p)


def http_url(*schemes: str) -> Parser:
    def parse(value: Any, ctx: _Context) -> str:
        value = nonempty(value, ctx).strip()
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in schemes:
            raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL")
        return value.rstrip("/")

    return parse


def git_url(value: Any, ctx: _Context) -> str:
    """http(s):// or file:// URLs, or a local path (for tests and USB workflows)."""
    value = nonempty(value, ctx).strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"unsupported URL scheme {scheme!r} (http, https or file)")
        return value
    return file_path(value, ctx)


def choice(*options: str) -> Parser:
    def parse(value: Any, ctx: _Context) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return parse


def optional(parser: Parser) -> Parser:
    def parse(value: Any, ctx: _Context) -> Any:
        return None if value is None else parser(value, ctx)

    return parse


def list_of(parser: Parser) -> Parser:
    def parse(value: Any, ctx: _Context) -> tuple:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_kind(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(parser(item, ctx))
            except ValueError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return tuple(items)

    return parse


def mapping(value: Any, ctx: _Context) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {_kind(value)}")
    return value


def device_id(value: Any, ctx: _Context) -> str:
    value = string(value, ctx)
    if not _DEVICE_ID.match(value):
        raise ValueError(
            f"{value!r} is not a valid device id (letters, digits, '.', '_', '-'; "
            "1 to 128 characters, starting with a letter or digit)"
        )
    return value


def daily_window(value: Any, ctx: _Context) -> schedule.DailyWindow:
    return schedule.parse_daily_window(string(value, ctx))


def window(value: Any, ctx: _Context) -> schedule.Window:
    return schedule.parse_window(string(value, ctx))


def proxy_url(value: Any, ctx: _Context) -> Proxy:
    return parse_proxy_url(nonempty(value, ctx))


def no_proxy_rule(value: Any, ctx: _Context) -> Rule:
    return parse_rule(nonempty(value, ctx))


_kind = yamlload.kind_of


def option(
    default: Any, parser: Parser, doc: str, *, required: bool = False, is_file: bool = False
) -> Any:
    """Declare a configuration key: its default, its parser and its one-line documentation.

    `is_file` marks a file the agent reads, so `check_files` can test it at start-up.
    """
    meta = {"parser": parser, "doc": doc, "required": required, "is_file": is_file}
    if isinstance(default, list | dict):
        raise TypeError("use a tuple or None for container defaults")
    return field(default=default, metadata=meta)


# --- the sections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    id: str = option("", device_id, "This device's id, as the WOS knows it.", required=True)
    state_dir: str = option("/var/lib/margo-lite", file_path, "Where all agent state lives.")
    runtime_dir: str = option(
        "/run/margo-lite", file_path, "Volatile status (last poll, next poll): RAM, not flash."
    )


@dataclass(frozen=True)
class WosConfig:
    url: str = option(
        "",
        http_url("http", "https"),
        "Device API base URL (status, capabilities, onboarding).",
        required=True,
    )
    ca_file: str | None = option(
        None, optional(file_path), "CA bundle for the WOS; default: the system store.", is_file=True
    )
    token_url: str | None = option(
        None,
        optional(http_url("http", "https")),
        "OAuth2 token endpoint (client credentials); optional.",
    )
    client_id: str | None = option(None, optional(nonempty), "OAuth2 client id.")
    client_secret_file: str | None = option(
        None,
        optional(file_path),
        "File holding the OAuth2 client secret (mode 0600).",
        is_file=True,
    )
    timeout: float = option(10.0, positive_duration, "Connect and read timeout of each call.")
    status_case: str = option(
        "capitalized",
        choice("capitalized", "lowercase"),
        "Spelling of states in reports: Installed or installed.",
    )
    outbox_limit: int = option(
        1000, positive_int, "Most status reports held while the WOS is away."
    )
    signing_key: str | None = option(
        None, optional(file_path), "Device private key (PEM) to sign request bodies.", is_file=True
    )
    signing_cert: str | None = option(
        None, optional(file_path), "Device certificate (PEM) matching signing_key.", is_file=True
    )
    client_cert: str | None = option(
        None, optional(file_path), "Client certificate (PEM) for mutual TLS.", is_file=True
    )
    client_key: str | None = option(
        None, optional(file_path), "Its private key (PEM); default: in client_cert.", is_file=True
    )


@dataclass(frozen=True)
class GitConfig:
    url: str = option(
        "", git_url, "Desired-state repository: http(s)://, file:// or a path.", required=True
    )
    branch: str = option("main", nonempty, "Branch holding the desired state.")
    path: str = option("", string, "Folder in the repository holding the deployment files.")
    username: str | None = option(
        None, optional(nonempty), "With token_file: HTTP basic auth user name."
    )
    token_file: str | None = option(
        None, optional(file_path), "Access token file, read before every poll.", is_file=True
    )
    ca_file: str | None = option(
        None,
        optional(file_path),
        "CA bundle for the Git server; default: the system store.",
        is_file=True,
    )
    timeout: float = option(30.0, positive_duration, "Connect and read timeout of each request.")
    auth: str = option(
        "basic", choice("basic", "bearer"), "How token_file is sent: HTTP basic or bearer."
    )
    trusted_keys: tuple = option(
        (),
        list_of(file_path),
        "PGP public keys; when set, only commits signed by one of them are applied.",
        is_file=True,
    )


@dataclass(frozen=True)
class PollConfig:
    interval: float = option(60.0, positive_duration, "Time between polls: seconds, 30s, 5m, 1h.")
    hours: tuple = option(
        (), list_of(daily_window), 'Polling period, e.g. ["06:00-22:00"]; empty: all day.'
    )
    downtime: tuple = option(
        (), list_of(window), 'Windows with no communication at all, e.g. ["Sat 22:00-Sun 04:00"].'
    )
    jitter: float = option(0.1, fraction, "Random spread of each interval, as a fraction of it.")
    max_backoff: float = option(
        900.0, positive_duration, "Longest wait between polls after repeated errors."
    )


@dataclass(frozen=True)
class RuntimeConfig:
    engine: str = option("auto", choice("auto", "podman", "docker"), "Container engine.")
    compose: str = option(
        "auto",
        choice("auto", "builtin", "podman-compose", "docker-compose", "docker-compose-plugin"),
        "Compose driver.",
    )
    health_timeout: float = option(
        60.0, positive_duration, "How long new containers may take to start and be healthy."
    )
    purge_volumes: bool = option(
        False, boolean, "Remove named volumes when a deployment is removed."
    )
    observe_interval: float = option(
        30.0, positive_duration, "Time between checks that managed containers still run."
    )


@dataclass(frozen=True)
class PackagesConfig:
    max_size: int = option(512 << 20, size, "Largest package download or extracted package.")
    cache_size: int = option(2 << 30, size, "Bound of the package cache; oldest unused go first.")
    timeout: float = option(60.0, positive_duration, "Connect and read timeout of downloads.")
    deadline: float = option(
        1800.0,
        positive_duration,
        "Longest the downloads of one package (signature, key) take, retries included.",
    )
    ca_file: str | None = option(
        None,
        optional(file_path),
        "CA bundle for package servers and OCI registries; default: the system store.",
        is_file=True,
    )
    require_signature: bool = option(
        False, boolean, "Refuse packages without keyLocation and a valid signature."
    )
    trusted_keys: tuple = option(
        (),
        list_of(file_path),
        "Pinned PGP public keys; when set, signatures must verify against these.",
        is_file=True,
    )


@dataclass(frozen=True)
class PolicyConfig:
    allow_privileged: bool = option(False, boolean, "Allow privileged containers.")
    allow_host_network: bool = option(False, boolean, "Allow network_mode: host.")
    allow_host_pid: bool = option(False, boolean, "Allow pid: host.")
    allow_host_ipc: bool = option(False, boolean, "Allow ipc: host.")
    allowed_capabilities: tuple = option(
        (), list_of(nonempty), "Capabilities a container may add (cap_add)."
    )
    allow_devices: bool = option(False, boolean, "Allow device access (devices:).")
    allowed_bind_paths: tuple = option(
        (), list_of(nonempty), "Host folders bind mounts may use (and below)."
    )
    allowed_external_volumes: tuple = option(
        (), list_of(nonempty), "Volumes not created by margo-lite that services may mount."
    )
    allowed_external_networks: tuple = option(
        (), list_of(nonempty), "Networks not created by margo-lite that services may join."
    )


@dataclass(frozen=True)
class CapabilitiesConfig:
    vendor: str | None = option(None, optional(nonempty), "Reported device vendor.")
    modelNumber: str | None = option(None, optional(nonempty), "Reported model number.")
    serialNumber: str | None = option(None, optional(nonempty), "Reported serial number.")
    roles: tuple = option(
        ("Standalone Device",),
        list_of(choice("Standalone Device", "Standalone Cluster", "Cluster Leader")),
        "Reported roles.",
    )
    peripherals: tuple = option(
        (), list_of(mapping), "Extra peripherals (name, type, modelNumber, properties)."
    )


@dataclass(frozen=True)
class NetworkConfig:
    proxy: Proxy | None = option(  # noqa: RUF009 (a frozen dataclass: immutable)
        None,
        optional(proxy_url),
        "The site's HTTP proxy for every connection out, http://[user@]host:port.",
    )
    proxy_password_file: str | None = option(
        None,
        optional(file_path),
        "File holding the proxy password (mode 0600), for the user named in the proxy URL.",
        is_file=True,
    )
    no_proxy: tuple | None = option(
        None,
        optional(list_of(no_proxy_rule)),
        "Hosts reached directly: names (with their sub-domains), IP addresses, CIDR ranges.",
    )
    proxy_from_env: bool = option(
        True, boolean, "Without network.proxy / no_proxy, read HTTPS_PROXY, HTTP_PROXY, NO_PROXY."
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration, plus the file it came from."""

    device: DeviceConfig
    wos: WosConfig
    git: GitConfig
    poll: PollConfig = field(default_factory=PollConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    packages: PackagesConfig = field(default_factory=PackagesConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    capabilities: CapabilitiesConfig = field(default_factory=CapabilitiesConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    source: str = ""

    @property
    def state_dir(self) -> Path:
        return Path(self.device.state_dir)


SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "wos": WosConfig,
    "git": GitConfig,
    "poll": PollConfig,
    "runtime": RuntimeConfig,
    "packages": PackagesConfig,
    "policy": PolicyConfig,
    "capabilities": CapabilitiesConfig,
    "network": NetworkConfig,
}


# --- loading ---------------------------------------------------------------------------------


def default_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR) or DEFAULT_PATH


def parse_config(data: Any, *, source: str = "", base_dir: Path | None = None) -> Config:
    """Build a Config from parsed YAML. Pure: touches no files."""
    ctx = _Context(base_dir or Path("."))
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections, got {_kind(data)}", source=source)
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown section (known: {', '.join(SECTIONS)})", source=source, key=str(name)
            )
    sections = {
        name: _parse_section(cls, data.get(name), name, source, ctx)
        for name, cls in SECTIONS.items()
    }
    runtime = sections["runtime"]
    wanted_engine = _COMPOSE_ENGINE.get(runtime.compose)
    if wanted_engine and runtime.engine not in ("auto", wanted_engine):
        raise ConfigError(
            f"compose driver {runtime.compose} works with engine {wanted_engine}, "
            f"not {runtime.engine}",
            source=source,
            key="runtime.compose",
        )
    return Config(**sections, source=source)


#: Compose drivers that drive one engine only.
_COMPOSE_ENGINE = {
    "podman-compose": "podman",
    "docker-compose": "docker",
    "docker-compose-plugin": "docker",
}


def _parse_section(cls: type, raw: Any, name: str, source: str, ctx: _Context) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {_kind(raw)}", source=source, key=name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"unknown key (known: {', '.join(fields)})", source=source, key=f"{name}.{key}"
            )
    values = {}
    for key, f in fields.items():
        if key not in raw:
            if f.metadata["required"]:
                raise ConfigError("required key is missing", source=source, key=f"{name}.{key}")
            continue
        try:
            values[key] = f.metadata["parser"](raw[key], ctx)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"{name}.{key}") from None
    return cls(**values)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and check the configuration file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("configuration file not found", source=source) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration file: {exc.strerror}", source=source
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration file is larger than {MAX_CONFIG_BYTES} bytes", source=source
        )
    try:
        data = yamlload.load_one(raw)
    except MargoLiteError as exc:
        raise ConfigError(exc.message, source=source) from None
    base_dir = Path(os.path.abspath(source)).parent
    return parse_config(data, source=source, base_dir=base_dir)


def referenced_files(config: Config) -> list[tuple[str, str]]:
    """(dotted key, path) of every file the configuration points at."""
    found = []
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.metadata["is_file"] and value is not None:
                paths = value if isinstance(value, tuple) else (value,)
                found.extend((f"{section_name}.{f.name}", p) for p in paths)
    return found


def check_files(config: Config) -> None:
    """Fail now, with the key's name, for a referenced file that cannot be read."""
    for key, file_path in referenced_files(config):
        try:
            with open(file_path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot read {file_path}: {exc.strerror}", source=config.source, key=key
            ) from None


def documented_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every key: feeds the README reference and its test."""
    rows = []
    for section_name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"{section_name}.{f.name}", f.default, f.metadata["doc"]))
    return rows
