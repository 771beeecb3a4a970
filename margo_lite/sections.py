"""The configuration's sections: one frozen dataclass each, every key declared with its docs.

Each key's `option(default, parser, doc)` is the one place that says what the key means:
`margo_lite.configdoc` renders docs/configuration.md from these declarations (a test fails
when the file is stale). A section's docstring is its introduction there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from margo_lite.options import (
    boolean,
    choice,
    daily_window,
    device_id,
    duration,
    file_path,
    fraction,
    git_url,
    http_url,
    label_map,
    list_of,
    mapping,
    no_proxy_rule,
    nonempty,
    option,
    optional,
    positive_duration,
    positive_int,
    proxy_url,
    size,
    spiffe_id,
    string,
    window,
)
from margo_lite.proxy import Proxy

SYSTEM_STORE = "system store"


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
class WosConfig:
    """The WOS (the Margo 1.0 WFM): where reports and capabilities go, and how calls are made."""

    url: str = option(
        "",
        http_url("http", "https"),
        "Device API base URL, `http://` or `https://` (status, capabilities, onboarding). With "
        "`wos.api: v1`, `https://` only, and it may carry a path prefix.",
        required=True,
    )
    api: str = option(
        "draft",
        choice("draft", "v1"),
        "Which Margo API the WOS speaks: `draft` (the Git-era draft: desired state from Git, "
        "OAuth2, `/device/{id}/...` paths) or `v1` (Workload Management API 1.0, rc.3: "
        "desired state over REST, mutual TLS with SPIFFE identities; needs `wos.client_cert`). "
        "See [Which Margo?](wire.md#which-margo).",
    )
    server_id: str | None = option(
        None,
        optional(spiffe_id),
        "The WOS's expected SPIFFE ID (`spiffe://<trust-domain>/margo/wfm/<wfm-id>`): its "
        "certificate must carry exactly this URI SAN. Unset: derived from the device's own "
        "certificate (its SPIFFE ID without `/client/<id>`). Only with `wos.api: v1`.",
        shown="from `client_cert`",
    )
    ca_file: str | None = option(
        None,
        optional(file_path),
        "CA bundle (the trust bundle, in v1) to verify the WOS.",
        is_file=True,
        shown=SYSTEM_STORE,
    )
    token_url: str | None = option(
        None,
        optional(http_url("http", "https")),
        "OAuth2 token endpoint (client credentials). Without it, calls carry no token. "
        "Draft profile only.",
    )
    client_id: str | None = option(None, optional(nonempty), "OAuth2 client id.")
    client_secret_file: str | None = option(
        None,
        optional(file_path),
        "File holding the OAuth2 client secret; keep it mode 0600.",
        is_file=True,
    )
    timeout: float = option(10.0, positive_duration, "Connect and read timeout of each WOS call.")
    status_case: str = option(
        "capitalized",
        choice("capitalized", "lowercase"),
        "`capitalized` (`Installed`) or `lowercase` (`installed`) state spelling in reports.",
    )
    outbox_limit: int = option(
        1000,
        positive_int,
        "Most status reports held on disk while the WOS is away; past it, intermediate "
        "reports are merged, never the newest of a deployment.",
    )
    signing_key: str | None = option(
        None,
        optional(file_path),
        "Device private key (PEM): when set with `signing_cert`, every request body is signed "
        "(`X-Payload-Signature`). Draft profile only.",
        is_file=True,
    )
    signing_cert: str | None = option(
        None,
        optional(file_path),
        "Device certificate (PEM) matching `signing_key`.",
        is_file=True,
    )
    client_cert: str | None = option(
        None,
        optional(file_path),
        "Client certificate (PEM) for mutual TLS with the WOS (in v1: the device's "
        "X.509-SVID); through a proxy it travels inside the CONNECT tunnel, end to end.",
        is_file=True,
    )
    client_key: str | None = option(
        None,
        optional(file_path),
        "Private key (PEM) of `client_cert`, when it is in a file of its own; keep it mode 0600.",
        is_file=True,
        shown="in `client_cert`",
    )


@dataclass(frozen=True)
class DesiredConfig:
    """Where the desired state comes from."""

    source: str | None = option(
        None,
        optional(choice("git", "wos")),
        "`git`: the repository of the `git` section (which is then required). `wos`: the WOS's "
        "`GET /api/v1/deployments` (needs `wos.api: v1`; the `git` section may be absent).",
        shown="`git` with `wos.api: draft`, `wos` with `v1`",
    )


@dataclass(frozen=True)
class GitConfig:
    """The desired-state repository (with `desired.source: git`)."""

    url: str = option(
        "",
        git_url,
        "Desired-state repository: `http(s)://` (a server speaking Git protocol v2), `file://` "
        "or a local path. A user or password in it is refused: use `username` and `token_file`.",
        required=True,
    )
    branch: str = option("main", nonempty, "Branch holding the desired state.")
    path: str = option(
        "",
        string,
        "Folder in the repository holding the `ApplicationDeployment` files (every "
        "`*.yaml`/`*.yml` below it).",
    )
    username: str | None = option(
        None, optional(nonempty), "With `token_file`: HTTP basic auth user name."
    )
    token_file: str | None = option(
        None,
        optional(file_path),
        "File holding the access token; read before every poll, so a rotated token needs no "
        "restart.",
        is_file=True,
    )
    ca_file: str | None = option(
        None,
        optional(file_path),
        "CA bundle to verify the Git server.",
        is_file=True,
        shown=SYSTEM_STORE,
    )
    timeout: float = option(
        30.0,
        positive_duration,
        "Connect timeout, and longest silence while reading, of each Git request.",
    )
    auth: str = option(
        "basic",
        choice("basic", "bearer"),
        "How the token is sent: `basic` (with `username`) or `bearer` (`Authorization: Bearer`).",
    )
    trusted_keys: tuple = option(
        (),
        list_of(file_path),
        "PGP public key files; when set, the fetched tip commit must carry a valid signature "
        "from one of them or it is not applied.",
        is_file=True,
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


@dataclass(frozen=True)
class NetworkConfig:
    """Only behind a site proxy."""

    proxy: Proxy | None = option(  # noqa: RUF009 (a frozen dataclass: immutable)
        None,
        optional(proxy_url),
        "The site's HTTP proxy, `http://[user@]host:port`, for every connection out (Git, WOS, "
        "onboarding, package downloads): plain http is forwarded, https tunnelled with CONNECT "
        "and verified end to end against the server, never the proxy. A password in the URL is "
        "a configuration error.",
    )
    proxy_password_file: str | None = option(
        None,
        optional(file_path),
        "File holding the password of the user named in the proxy URL (mode 0600); sent to the "
        "proxy only, masked in every message.",
        is_file=True,
    )
    no_proxy: tuple | None = option(
        None,
        optional(list_of(no_proxy_rule)),
        "Hosts reached directly: host names (with their sub-domains; `example.com`, "
        "`.example.com` and `*.example.com` alike), IP addresses, CIDR ranges, `*` for all. "
        "Loopback is not bypassed unless listed. An empty list bypasses nothing and ignores "
        "`NO_PROXY`.",
        shown="from `NO_PROXY`",
    )
    proxy_from_env: bool = option(
        True,
        boolean,
        "Read `https_proxy` / `HTTPS_PROXY` (for https), `http_proxy` / `HTTP_PROXY` (for "
        "http) and `no_proxy` / `NO_PROXY` as curl and git do (lower case first) for what "
        "`network.proxy` / `no_proxy` leave unset. `margo-lite check-config` prints the proxy "
        "in force.",
    )
