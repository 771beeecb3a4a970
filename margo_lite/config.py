"""The agent's configuration: one YAML file, checked strictly, turned into frozen values.

Every section is a frozen value class (`margo_lite.sections`); every key is declared there with
`option(default, parser, doc)` (`margo_lite.options`). Loose input ("5m", "06:00-22:00",
relative paths) is converted once, here, so nothing downstream parses strings again. A
mistake produces one `ConfigError` naming the file and the dotted key; unknown keys are
mistakes too, because a typo in a key would otherwise silently leave a default in force.
This module holds the whole file: the sections together, the checks across sections, loading,
and the files the configuration names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from margo_lite import valueclass, yamlload
from margo_lite.errors import ConfigError, MargoLiteError
from margo_lite.netsections import DesiredConfig, GitConfig, NetworkConfig, WosConfig
from margo_lite.options import (  # noqa: F401 (callers and tests use them as config.X)
    Context,
    device_id,
    file_path,
    http_url,
    parse_section,
    size,
)
from margo_lite.sections import (
    CapabilitiesConfig,
    DeviceConfig,
    PackagesConfig,
    PolicyConfig,
    PollConfig,
    RuntimeConfig,
)
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/etc/margo-lite/config.yaml"
ENV_VAR = "MARGO_LITE_CONFIG"
MAX_CONFIG_BYTES = 1 << 20

_kind = yamlload.kind_of


@dataclass(frozen=True)
class Config:
    """The whole configuration, plus the file it came from."""

    device: DeviceConfig
    wos: WosConfig
    git: GitConfig | None = None  # None only with desired.source: wos
    desired: DesiredConfig = field(default_factory=DesiredConfig)
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

    @property
    def desired_url(self) -> str:
        """Where the desired state comes from (unsanitized: log it through sanitize_url)."""
        if self.desired.source == "git" and self.git is not None:
            return self.git.url
        return self.wos.url


SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "wos": WosConfig,
    "desired": DesiredConfig,
    "git": GitConfig,
    "poll": PollConfig,
    "runtime": RuntimeConfig,
    "packages": PackagesConfig,
    "policy": PolicyConfig,
    "capabilities": CapabilitiesConfig,
    "network": NetworkConfig,
}

#: Sections that may be left out entirely (each key of the others has a default or is
#: required); `git` is required by `desired.source: git`, checked across sections.
_OPTIONAL_SECTIONS = {"git"}


# --- loading ---------------------------------------------------------------------------------


def default_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR) or DEFAULT_PATH


def parse_config(data: Any, *, source: str = "", base_dir: Path | None = None) -> Config:
    """Build a Config from parsed YAML. Pure: touches no files."""
    ctx = Context(base_dir or Path("."))
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections, got {_kind(data)}", source=source)
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown section (known: {', '.join(SECTIONS)})", source=source, key=str(name)
            )
    sections = {
        name: parse_section(cls, data.get(name), name, source, ctx)
        for name, cls in SECTIONS.items()
        if name not in _OPTIONAL_SECTIONS or data.get(name) is not None
    }
    sections["desired"] = _desired(sections, source)
    _check_across(sections, source)
    return Config(**sections, source=source)


def _desired(sections: dict[str, Any], source: str) -> DesiredConfig:
    """`desired.source` with its default filled in, which depends on `wos.api`."""
    wos, desired = sections["wos"], sections["desired"]
    chosen = desired.source or ("git" if wos.api == "draft" else "wos")
    if chosen == "git" and "git" not in sections:
        raise ConfigError(
            "required section is missing (desired.source is git)", source=source, key="git"
        )
    if chosen == "wos" and wos.api == "draft":
        raise ConfigError(
            "wos needs wos.api: v1 (the draft API serves no desired state; use git)",
            source=source,
            key="desired.source",
        )
    return valueclass.replace(desired, source=chosen)


#: Keys of the draft profile that Margo 1.0 has no use for: mutual TLS is its authorization.
_DRAFT_ONLY = ("token_url", "client_id", "client_secret_file", "signing_key", "signing_cert")


def _check_across(sections: dict[str, Any], source: str) -> None:
    """The rules that tie one key to another; each names the key to change."""

    def refuse(key: str, message: str) -> None:
        raise ConfigError(message, source=source, key=key)

    wos, runtime = sections["wos"], sections["runtime"]
    wanted_engine = _COMPOSE_ENGINE.get(runtime.compose)
    if wanted_engine and runtime.engine not in ("auto", wanted_engine):
        refuse(
            "runtime.compose",
            f"compose driver {runtime.compose} works with engine {wanted_engine}, "
            f"not {runtime.engine}",
        )
    if runtime.settle >= runtime.health_timeout:
        refuse(
            "runtime.settle",
            f"must be shorter than runtime.health_timeout ({runtime.health_timeout:g}s), "
            "or no container could ever count as running",
        )
    if wos.client_key is not None and wos.client_cert is None:
        refuse("wos.client_key", "set wos.client_cert too (the certificate of this key)")
    if wos.api == "draft":
        if wos.server_id is not None:
            refuse("wos.server_id", "only used with wos.api: v1")
        return
    if not wos.url.lower().startswith("https://"):
        refuse("wos.url", "wos.api v1 needs an https:// URL (every call is mutual TLS)")
    if wos.client_cert is None:
        refuse("wos.client_cert", "required with wos.api: v1 (the device's certificate)")
    for key in _DRAFT_ONLY:
        if getattr(wos, key) is not None:
            refuse(f"wos.{key}", "not used with wos.api: v1 (mutual TLS is the authorization)")


#: Compose drivers that drive one engine only.
_COMPOSE_ENGINE = {
    "podman-compose": "podman",
    "docker-compose": "docker",
    "docker-compose-plugin": "docker",
}


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
        if section is None:
            continue
        for f in valueclass.fields(section):
            value = getattr(section, f.name)
            if f.metadata["is_file"] and value is not None:
                paths = value if isinstance(value, tuple) else (value,)
                found.extend((f"{section_name}.{f.name}", p) for p in paths)
    return found


def check_files(config: Config) -> None:
    """Fail now, with the key's name, for a referenced file that cannot be read."""
    for key, path in referenced_files(config):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror}", source=config.source, key=key
            ) from None


def documented_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every key: feeds docs/configuration.md and its test."""
    rows = []
    for section_name, cls in SECTIONS.items():
        for f in valueclass.fields(cls):
            rows.append((f"{section_name}.{f.name}", f.default, f.metadata["doc"]))
    return rows
