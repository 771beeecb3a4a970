"""The configuration's sections for what lies beyond the device: the WOS, the desired state's
source (Git) and the site's network (its proxy).

Declared like the device's own sections in `margo_lite.sections` (one frozen value class each,
every key an `option` with its docs); `margo_lite.config` puts them together and
`margo_lite.configdoc` renders them into docs/configuration.md.
"""

from __future__ import annotations

from margo_lite.options import (
    SYSTEM_STORE,
    boolean,
    choice,
    file_path,
    git_url,
    http_url,
    list_of,
    no_proxy_rule,
    nonempty,
    option,
    optional,
    positive_duration,
    positive_int,
    proxy_url,
    spiffe_id,
    string,
)
from margo_lite.proxy import Proxy
from margo_lite.valueclass import dataclass


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
class NetworkConfig:
    """Only behind a site proxy."""

    proxy: Proxy | None = option(
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
