"""The configuration's sections: one frozen value class each, every key declared with its docs.

Each key's `option(default, parser, doc)` is the one place that says what the key means:
`margo_lite.configdoc` renders docs/configuration.md from these declarations (a test fails
when the file is stale). A section's docstring is its introduction there. These are the
device's own sections; those for the servers it talks to and the site's network are in
`margo_lite.netsections`.
"""

from __future__ import annotations

from collections.abc import Mapping

from margo_lite.options import (
    SYSTEM_STORE,
    boolean,
    choice,
    daily_window,
    device_id,
    duration,
    file_path,
    fraction,
    label_map,
    list_of,
    mapping,
    nonempty,
    option,
    optional,
    positive_duration,
    size,
    window,
)
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class DeviceConfig:
    """This device and where it keeps its state."""

    id: str = option(
        "",
        device_id,
        "This device's id as the WOS knows it: letters, digits, `.`, `_`, `-`, at most 128 "
        "characters. Used in Device API paths.",
        required=True,
    )
    state_dir: str = option(
        "/var/lib/margo-lite",
        file_path,
        "Where all agent state lives (records, Git objects, package cache, report outbox). "
        "Under the packaged unit, another folder needs `ReadWritePaths=` in a drop-in; "
        "`check-config` and start-up refuse one the service cannot write (exit 2).",
    )
    runtime_dir: str = option(
        "/run/margo-lite",
        file_path,
        "Volatile status shown by `margo-lite status` (last poll, its result, next poll). It "
        "changes on every poll, so it lives in RAM (tmpfs), not on flash: an idle poll writes "
        "nothing to `state_dir`.",
    )


@dataclass(frozen=True)
class PollConfig:
    """When the agent talks to the network."""

    interval: float = option(60.0, positive_duration, "Time between polls.")
    hours: tuple = option(
        (),
        list_of(daily_window),
        'Polling period: daily windows like `"06:00-22:00"` (may span midnight); empty means '
        "all day.",
    )
    downtime: tuple = option(
        (),
        list_of(window),
        "Known downtimes: no communication at all, and communication errors ignored. Daily "
        '`"01:00-03:00"`, weekly `"Sat 22:00-Sun 04:00"`, or dated '
        '`"2026-12-24T18:00-2026-12-27T06:00"`.',
    )
    jitter: float = option(
        0.1,
        fraction,
        "Random spread of each interval, as a fraction of it, so a fleet does not poll in step.",
    )
    max_backoff: float = option(
        900.0, positive_duration, "Longest wait between polls after repeated errors."
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """The container engine and how it is driven."""

    engine: str = option(
        "auto", choice("auto", "podman", "docker"), "`auto`, `podman` or `docker`."
    )
    compose: str = option(
        "auto",
        choice("auto", "builtin", "podman-compose", "docker-compose", "docker-compose-plugin"),
        "`auto`, `builtin`, `podman-compose`, `docker-compose` (v1) or `docker-compose-plugin` "
        "(v2); see [the drivers](agent.md#containers-engines-and-compose-drivers).",
    )
    health_timeout: float = option(
        60.0,
        positive_duration,
        "How long an update's new containers may take to run and be healthy before the old "
        "version is restored.",
    )
    settle: float = option(
        1.0,
        duration,
        "How long a started container must stay up, unrestarted, before it counts as running "
        "(and its component `Installed`); shorter than `health_timeout`.",
    )
    purge_volumes: bool = option(
        False, boolean, "Remove a deployment's named volumes when it is removed (kept by default)."
    )
    observe_interval: float = option(
        30.0,
        positive_duration,
        "Time between checks that managed containers still run (self-heal).",
    )


@dataclass(frozen=True)
class PackagesConfig:
    """Application packages: downloads, their cache and their signatures."""

    max_size: int = option(
        512 << 20, size, "Largest package download, and largest extracted package."
    )
    cache_size: int = option(2 << 30, size, "Bound of the package cache.")
    timeout: float = option(
        60.0, positive_duration, "Connect and read timeout of package downloads."
    )
    deadline: float = option(
        1800.0,
        positive_duration,
        "Longest the downloads of one step (a package, its signature and key) may take "
        "together, redirects, retries and their waits included; a server sending too slowly is "
        "cut there (`PACKAGE_DOWNLOAD_FAILED`) and the other deployments go on.",
    )
    ca_file: str | None = option(
        None,
        optional(file_path),
        "CA bundle to verify package servers (https `packageLocation` and `keyLocation`) and "
        "OCI registries.",
        is_file=True,
        shown=SYSTEM_STORE,
    )
    require_signature: bool = option(
        False, boolean, "Refuse any package that is not signed and verified."
    )
    trusted_keys: tuple = option(
        (),
        list_of(file_path),
        "Pinned PGP public key files; when set, package signatures must verify against one of "
        "these, whatever `keyLocation` says.",
        is_file=True,
    )


@dataclass(frozen=True)
class PolicyConfig:
    """What a deployment may ask of the host; everything not allowed here is denied."""

    allow_privileged: bool = option(False, boolean, "Allow `privileged: true` containers.")
    allow_host_network: bool = option(False, boolean, "Allow `network_mode: host`.")
    allow_host_pid: bool = option(False, boolean, "Allow `pid: host`.")
    allow_host_ipc: bool = option(False, boolean, "Allow `ipc: host`.")
    allowed_capabilities: tuple = option(
        (), list_of(nonempty), "Capabilities containers may add with `cap_add`."
    )
    allow_devices: bool = option(False, boolean, "Allow device access (`devices:`).")
    allowed_bind_paths: tuple = option(
        (), list_of(nonempty), "Host folders that bind mounts may use (the folder and below)."
    )
    allowed_external_volumes: tuple = option(
        (),
        list_of(nonempty),
        "Volumes margo-lite did not create (`external: true`) that services may mount, by name.",
    )
    allowed_external_networks: tuple = option(
        (),
        list_of(nonempty),
        "Networks margo-lite did not create (`external: true`) that services may join, by name.",
    )


@dataclass(frozen=True)
class CapabilitiesConfig:
    """What the device reports about itself beyond what it discovers."""

    vendor: str | None = option(None, optional(nonempty), "Reported device vendor.")
    modelNumber: str | None = option(None, optional(nonempty), "Reported model number.")
    serialNumber: str | None = option(None, optional(nonempty), "Reported serial number.")
    roles: tuple = option(
        ("Standalone Device",),
        list_of(choice("Standalone Device", "Standalone Cluster", "Cluster Leader")),
        "Reported roles: `Standalone Device`, `Standalone Cluster`, `Cluster Leader`.",
    )
    peripherals: tuple = option(
        (),
        list_of(mapping),
        "Extra peripherals the device cannot discover (each with name, type, modelNumber, "
        "properties).",
    )
    labels: Mapping[str, Any] | None = option(
        None,
        optional(label_map),
        "Labels sent with the Margo 1.0 capabilities (`wos.api: v1`), for the WFM's "
        "eligibility rules: a name to a string, number, boolean, or a list of strings or of "
        "numbers.",
    )
