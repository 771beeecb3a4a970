"""The site proxy: parsing and matching, the configuration, and every transport through a real
forward proxy (squid on 127.0.0.1) with and without authentication.

What a user checks: the proxy's own access log lists every request a server saw (nothing
bypasses it unless `no_proxy` says so); a wrong password or a dead proxy is one coded error
naming the proxy, its password masked; TLS is verified against the server, not the proxy.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml

from margo_lite import capabilities, config, onboarding, pools, proxy, valueclass
from margo_lite.config import CapabilitiesConfig, GitConfig, WosConfig
from margo_lite.devkit import wossim
from margo_lite.download import Downloader
from margo_lite.errors import DownloadError, SourceError, WosError
from margo_lite.gitsource import GitSource
from margo_lite.wos import WosClient, status_body
from tests.conftest import base_config
from tests.support.engines import free_port
from tests.support.gitserver import Upstream
from tests.support.pkgfixtures import test_ca  # noqa: F401 (fixture)
from tests.support.pkgserver import PackageServer
from tests.support.proxyserver import ForwardProxy
from tests.support.testca import TestCA
from tests.support.wait import wait_for
from tests.support.wos import pki, simulator  # noqa: F401 (pki: a fixture)

USER, PASSWORD = "gw-proxy-user", "proxy-pass-7d2e91"

# --- pure: URLs, rules, precedence ---------------------------------------------------------


def test_proxy_url_takes_a_user_but_never_a_password():
    p = proxy.parse_proxy_url("http://gw-001@Proxy.Site.example:3128")
    assert (p.host, p.port, p.user, p.password) == ("proxy.site.example", 3128, "gw-001", None)
    assert p.url == "http://proxy.site.example:3128"
    assert p.with_password("pw-12345").shown == "http://gw-001:***@proxy.site.example:3128"
    for bad, says in [
        ("http://gw:pw-12345@proxy:3128", "password"),
        ("https://proxy:3128", "scheme"),
        ("socks5://proxy:1080", "scheme"),
        ("http://proxy", "port"),
        ("http://proxy:3128/path", "path"),
        ("http://:3128", "host"),
        ("http://proxy:99999", "valid"),
        ("http://us%0d%0aX-Evil: 1@proxy:3128", "control"),  # no header injection by the user
        ("http://proxy\r\nX-Evil: 1:3128", "control"),
    ]:
        with pytest.raises(ValueError, match=says):
            proxy.parse_proxy_url(bad)
    # environment values may omit the scheme and the port, as curl allows
    assert proxy.parse_proxy_url("proxy:8080", lenient=True).port == 8080
    assert proxy.parse_proxy_url("http://proxy", lenient=True).port == proxy.DEFAULT_PORT
    assert "pw-12345" not in repr(p.with_password("pw-12345"))


@pytest.mark.parametrize(
    "rule, host, bypass",
    [
        ("example.com", "example.com", True),
        ("example.com", "git.example.com", True),
        (".example.com", "git.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("example.com", "notexample.com", False),
        ("example.com", "example.com.evil.net", False),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("192.168.1.5", "192.168.1.5", True),
        ("::1", "[::1]", True),
        ("fd00::/8", "[fd12::1]", True),
        ("127.0.0.1", "localhost", False),  # nothing is resolved to decide
        ("localhost", "127.0.0.1", False),
        ("*", "anything.example", True),
    ],
)
def test_no_proxy_rules_match_like_curl(rule, host, bypass):
    p = proxy.Proxy("proxy", 3128)
    settings = proxy.Settings(http=p, https=p, no_proxy=(proxy.parse_rule(rule),))
    assert (settings.proxy_for(f"https://{host}:443/x") is None) is bypass


@pytest.mark.parametrize("bad", ["host:8080", "http://host", "a/b/c", "bad host", "-x.com"])
def test_bad_no_proxy_entries_are_refused(bad):
    with pytest.raises(ValueError):
        proxy.parse_rule(bad)


def test_configuration_wins_over_the_environment_and_lower_case_wins_over_upper():
    env = {
        "HTTPS_PROXY": "http://upper:1111",
        "https_proxy": "http://lower:2222",
        "HTTP_PROXY": "http://plain:3333",
        "NO_PROXY": "internal.example,10.0.0.0/8",
    }
    from_env = proxy.resolve(None, None, True, env)
    assert from_env.https.host == "lower" and from_env.https.source == "https_proxy"
    assert from_env.http.host == "plain"
    assert from_env.proxy_for("https://git.internal.example/x") is None
    assert from_env.proxy_for("https://git.example.org/x").host == "lower"

    configured = proxy.parse_proxy_url("http://site-proxy:3128")
    settings = proxy.resolve(configured, (), True, env)
    assert settings.https.host == settings.http.host == "site-proxy"
    assert settings.proxy_for("https://git.internal.example/x") is not None  # [] wins too

    assert proxy.resolve(None, None, False, env) == proxy.DIRECT
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        proxy.resolve(None, None, True, {"HTTPS_PROXY": "http://u:secret-99@p:1"})


# --- the configuration and check-config --------------------------------------------------------


def _network_config(tmp_path: Path, network: dict) -> dict:
    data = base_config(tmp_path)
    data["network"] = network
    return data


def test_check_config_shows_the_proxy_with_its_password_masked(tmp_path, config_file, cli):
    secret = tmp_path / "proxy-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    path = config_file(
        _network_config(
            tmp_path,
            {
                "proxy": f"http://{USER}@proxy.site.example:3128",
                "proxy_password_file": str(secret),
                "no_proxy": ["localhost", "10.0.0.0/8"],
            },
        )
    )
    result = cli("-c", str(path), "check-config", env={"HTTPS_PROXY": "http://other:1"})
    assert result.returncode == 0, result.stderr
    assert f"http://{USER}:***@proxy.site.example:3128 (from network.proxy)" in result.stdout
    assert "bypassed for: localhost, 10.0.0.0/8" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "network, env, says",
    [
        ({"proxy": f"http://{USER}:{PASSWORD}@proxy:3128"}, {}, "network.proxy: must not"),
        ({"proxy": "proxy:3128"}, {}, "network.proxy: unsupported proxy scheme"),
        ({"no_proxy": ["host:8080"]}, {}, "network.no_proxy: item 1"),
        ({"no_proxy": "localhost"}, {}, "network.no_proxy: expected a list"),
        ({"proxy_from_env": "yes"}, {}, "network.proxy_from_env"),
        ({}, {"https_proxy": f"http://{USER}:{PASSWORD}@proxy:3128"}, "https_proxy: must not"),
        ({}, {"NO_PROXY": "a b"}, "NO_PROXY"),
        ({"proxy": "http://proxy:3128", "proxy_password_file": "pw"}, {}, "needs a user"),
        ({"proxy": "http://u@proxy:3128", "proxy_password_file": "missing"}, {}, "cannot read"),
    ],
)
def test_bad_network_settings_are_one_line_and_exit_2(
    tmp_path, config_file, cli, network, env, says
):
    (tmp_path / "pw").write_text("some-password\n")
    (tmp_path / "pw").chmod(0o600)
    path = config_file(_network_config(tmp_path, network))
    result = cli("-c", str(path), "check-config", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert "CONFIG_INVALID" in result.stderr and "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr


def test_environment_is_ignored_when_proxy_from_env_is_false(tmp_path, config_file, cli):
    path = config_file(_network_config(tmp_path, {"proxy_from_env": False}))
    result = cli("-c", str(path), "check-config", env={"HTTPS_PROXY": "bad value!:x"})
    assert result.returncode == 0, result.stderr
    assert "network: direct (no proxy)" in result.stdout


# --- through a real forward proxy --------------------------------------------------------------


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.fixture(scope="module")
def auth_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(auth=(USER, PASSWORD)) as running:
        yield running


def _settings(
    fwd: ForwardProxy | None,
    *,
    user: str | None = None,
    password: str | None = None,
    no_proxy: tuple[proxy.Rule, ...] = (),
) -> proxy.Settings:
    """What `network.proxy: http://[user@]127.0.0.1:PORT` and `no_proxy` resolve to."""
    port = fwd.port if fwd is not None else free_port()  # None: a port nothing listens on
    return proxy.resolve(proxy.Proxy("127.0.0.1", port, user), no_proxy, False, {}, password)


class Servers:
    """One of each server margo-lite talks to: Git (http), WOS (http), packages (https)."""

    def __init__(self, tmp: Path, git_server, ca: TestCA) -> None:
        self.git = git_server
        self.upstream = Upstream(git_server.root / f"{tmp.name}.git")
        self.upstream.commit({"web-1.yaml": "kind: x\n"})
        self.sim = wossim.WosSimulator().start()
        self.pkg = PackageServer(ca).start()
        self.pkg_url = self.pkg.put("/apps/web.tgz", b"package bytes" * 100)
        self.tmp = tmp
        self.ca = ca

    def close(self) -> None:
        self.sim.stop()
        self.pkg.stop()

    def use_all(self, settings: proxy.Settings, tag: str) -> None:
        """A Git poll and fetch, a status report, capabilities, a package download."""
        source = GitSource(
            GitConfig(url=self.git.url(self.upstream.path.name)), self.tmp / tag, proxies=settings
        )
        assert source.poll().changed
        with WosClient(
            WosConfig(url=self.sim.url, timeout=10.0), "gw-proxy", self.tmp / tag, proxies=settings
        ) as client:
            client.post_status("web-1", status_body("web-1", "Installed", None, [], "capitalized"))
            body = capabilities.discover("gw-proxy", self.tmp / tag, CapabilitiesConfig())
            assert client.send_capabilities(body)
        downloader = Downloader(timeout=10.0, ca_file=str(self.ca.ca_file), proxies=settings)
        fetched = downloader.fetch(self.pkg_url, self.tmp / f"{tag}.tgz", limit=1 << 20)
        assert fetched.size == len(b"package bytes" * 100)


@pytest.fixture
def servers(tmp_path, git_server, test_ca) -> Iterator[Servers]:  # noqa: F811
    running = Servers(tmp_path, git_server, test_ca)
    try:
        yield running
    finally:
        running.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.mark.parametrize("with_auth", [False, True], ids=["open", "auth"])
def test_every_transport_goes_through_the_proxy(servers, open_proxy, auth_proxy, with_auth):
    fwd = auth_proxy if with_auth else open_proxy
    settings = _settings(fwd, user=USER if with_auth else None, password=PASSWORD)
    git_before, wos_before = servers.git.requests, len(servers.sim.requests())
    servers.use_all(settings, "via")

    git_seen = servers.git.requests - git_before
    wos_seen = len(servers.sim.requests()) - wos_before
    git_logged = lambda: [e for e in fwd.entries(servers.git.port) if e.status == 200]  # noqa: E731
    wos_logged = lambda: fwd.entries(_port(servers.sim.url))  # noqa: E731
    # squid writes a line when a request ends: wait for the last ones
    wait_for(lambda: len(git_logged()) >= git_seen, timeout=30, what="git requests in the log")
    wait_for(lambda: len(wos_logged()) >= wos_seen, timeout=30, what="WOS requests in the log")
    assert git_seen >= 2  # ls-refs and fetch
    assert {e.method for e in git_logged()} >= {"POST"}
    assert {(e.method, e.url.split("/", 3)[3]) for e in wos_logged()} >= {
        ("POST", "device/gw-proxy/deployment/web-1/status"),
        ("POST", "device/gw-proxy/capabilities"),
    }
    # https goes in a CONNECT tunnel: TLS to the package server, verified against its CA
    tunnels = wait_for(lambda: fwd.entries(servers.pkg.port), timeout=30, what="CONNECT")
    assert {e.method for e in tunnels} == {"CONNECT"}
    assert servers.pkg.downloads("/apps/web.tgz") == 1
    if with_auth:
        assert {e.user for e in git_logged() + wos_logged() + tunnels} == {USER}


def test_the_environment_variables_are_honoured(servers, open_proxy):
    """HTTP_PROXY / NO_PROXY as a systemd drop-in would set them, no network section at all."""
    env = {"HTTP_PROXY": open_proxy.url(), "NO_PROXY": "localhost"}
    settings = pools.settings_from(config.NetworkConfig(), env)
    wos_port = _port(servers.sim.url)
    with WosClient(
        WosConfig(url=servers.sim.url, timeout=10.0), "gw-env", servers.tmp, proxies=settings
    ) as client:
        client.post_status("web-1", status_body("web-1", "Installed", None, [], "capitalized"))
    assert wait_for(lambda: open_proxy.entries(wos_port), what="the report in the proxy's log")
    env["NO_PROXY"] = "localhost,127.0.0.1"
    settings = pools.settings_from(config.NetworkConfig(), env)
    with WosClient(
        WosConfig(url=servers.sim.url, timeout=10.0), "gw-env", servers.tmp, proxies=settings
    ) as client:
        client.post_status("web-1", status_body("web-1", "Failed", ("X", "y"), [], "capitalized"))
    assert len(servers.sim.statuses("web-1")) == 2
    assert len(open_proxy.entries(wos_port)) == 1


def test_no_proxy_hosts_bypass_the_proxy(servers, open_proxy):
    ports = (servers.git.port, _port(servers.sim.url), servers.pkg.port)
    before = [len(open_proxy.entries(port)) for port in ports]
    servers.use_all(_settings(open_proxy, no_proxy=(proxy.parse_rule("127.0.0.0/8"),)), "direct")
    assert [len(open_proxy.entries(port)) for port in ports] == before
    assert servers.pkg.downloads("/apps/web.tgz") == 1
    # a name rule does not cover the address: through the proxy again
    servers.use_all(_settings(open_proxy, no_proxy=(proxy.parse_rule("localhost"),)), "named")
    wait_for(
        lambda: len(open_proxy.entries(servers.pkg.port)) > before[2], what="the CONNECT logged"
    )


def _failures(servers: Servers, settings: proxy.Settings) -> list[Exception]:
    """The error each transport raises with `settings` (each must raise)."""
    found = []
    for attempt in (
        lambda: GitSource(
            GitConfig(url=servers.git.url(servers.upstream.path.name)),
            servers.tmp / "s",
            proxies=settings,
        ).poll(),
        lambda: WosClient(
            WosConfig(url=servers.sim.url, timeout=10.0), "gw-proxy", servers.tmp, proxies=settings
        ).send_capabilities({"properties": {}}),
        lambda: Downloader(timeout=10.0, ca_file=str(servers.ca.ca_file), proxies=settings).fetch(
            servers.pkg_url, servers.tmp / "pkg", limit=1 << 20
        ),
    ):
        with pytest.raises((SourceError, WosError, DownloadError)) as caught:
            attempt()
        found.append(caught.value)
    return found


@pytest.mark.parametrize("password", [None, "wrong-password-1"], ids=["none", "wrong"])
def test_a_wrong_proxy_password_is_proxy_auth_failed_and_reaches_no_server(
    servers, auth_proxy, password
):
    git_before, wos_before = servers.git.requests, len(servers.sim.requests())
    errors = _failures(servers, _settings(auth_proxy, user=USER, password=password))
    for error in errors:
        assert error.code == "PROXY_AUTH_FAILED", error
        assert f"http://{USER}" in error.message and "HTTP 407" in error.message
        assert PASSWORD not in str(error) and (password or PASSWORD) not in str(error)
    assert servers.git.requests == git_before
    assert len(servers.sim.requests()) == wos_before
    assert servers.pkg.requests("/apps/web.tgz") == 0
    assert not (servers.tmp / "pkg").exists()


def test_an_unreachable_proxy_is_proxy_unreachable(servers):
    errors = _failures(servers, _settings(None))
    for error in errors:
        assert error.code == "PROXY_UNREACHABLE", error
        assert "cannot connect to proxy http://127.0.0.1:" in error.message
    assert servers.pkg.requests("/apps/web.tgz") == 0


def test_tls_through_the_tunnel_is_checked_against_the_origin(servers, open_proxy, tmp_path):
    """The proxy is not trusted for TLS: a server whose CA the client does not trust fails,
    proxy or not; with mTLS the client certificate reaches the server through the tunnel."""
    settings = _settings(open_proxy)
    other = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "other.key"), "-out", str(other), "-days", "1",
         "-subj", "/CN=other CA"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(DownloadError, match="TLS"):
        Downloader(timeout=10.0, ca_file=str(other), proxies=settings).fetch(
            servers.pkg_url, tmp_path / "x", limit=1 << 20
        )

    # mTLS: the package server now requires a client certificate from the test CA
    cert, key = _client_cert(servers.ca, tmp_path)
    servers.pkg.tls.verify_mode = ssl.CERT_REQUIRED
    servers.pkg.tls.load_verify_locations(str(servers.ca.ca_file))
    anonymous = pools.Pools(settings, ca_file=str(servers.ca.ca_file), timeout=10.0, retries=False)
    with anonymous, pytest.raises(urllib3.exceptions.HTTPError):  # the server refuses it
        anonymous.request("GET", servers.pkg_url)
    with pools.Pools(
        settings,
        ca_file=str(servers.ca.ca_file),
        cert_file=str(cert),
        key_file=str(key),
        timeout=10.0,
        retries=False,
    ) as p:
        response = p.request("GET", servers.pkg_url)
        assert response.status == 200 and response.data == b"package bytes" * 100
    assert any(e.method == "CONNECT" for e in open_proxy.entries(servers.pkg.port))


def _client_cert(ca: TestCA, folder: Path) -> tuple[Path, Path]:
    """A client certificate signed by the test CA (its key sits beside its certificate)."""
    key, csr, cert = folder / "client.key", folder / "client.csr", folder / "client.pem"
    ext = folder / "client.ext"
    ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, timeout=60)  # noqa: E731
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=gw-proxy")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca.ca_file),
        "-CAkey", str(ca.ca_file.parent / "ca.key"), "-CAcreateserial", "-out", str(cert),
        "-days", "1", "-extfile", str(ext))  # fmt: skip
    return cert, key


def test_config_yaml_round_trip_of_a_proxy_section(tmp_path, config_file):
    """`network` loads from YAML into the settings the transports get."""
    from margo_lite import config

    path = config_file(
        _network_config(tmp_path, {"proxy": "http://proxy.site:3128", "no_proxy": []})
    )
    cfg = config.load_config(path)
    settings = pools.settings_from(cfg.network, {"HTTPS_PROXY": "http://ignored:1"})
    assert settings.proxy_for("https://wos.example.com/").url == "http://proxy.site:3128"
    assert yaml.safe_load(path.read_text())["network"]["no_proxy"] == []


def test_wos_mutual_tls_through_the_tunnel(open_proxy, test_ca, tmp_path):  # noqa: F811
    """A WOS that requires a client certificate, reached through the proxy: the handshake
    (server certificate checked against wos.ca_file, client certificate sent) is end to end."""
    cert, key = _client_cert(test_ca, tmp_path)
    tls = (str(test_ca.cert_file), str(test_ca.key_file))
    settings = _settings(open_proxy)
    body = status_body("web-1", "Installed", None, [], "capitalized")
    with wossim.WosSimulator(tls=tls, client_ca=str(test_ca.ca_file)) as sim:
        cfg = WosConfig(url=sim.url, ca_file=str(test_ca.ca_file), timeout=10.0)
        anonymous = WosClient(cfg, "gw-proxy", tmp_path, proxies=settings)
        with anonymous, pytest.raises(WosError) as refused:  # no client certificate
            anonymous.post_status("web-1", body)
        assert refused.value.code in ("WOS_TLS_FAILED", "WOS_UNREACHABLE"), refused.value
        assert sim.statuses("web-1") == []

        mtls = valueclass.replace(cfg, client_cert=str(cert), client_key=str(key))
        with WosClient(mtls, "gw-proxy", tmp_path, proxies=settings) as client:
            client.post_status("web-1", body)
        assert [s["status"]["state"] for s in sim.statuses("web-1")] == ["Installed"]
        port = _port(sim.url)
    tunnels = wait_for(lambda: open_proxy.entries(port), what="the CONNECT tunnels")
    assert {e.method for e in tunnels} == {"CONNECT"}


def test_onboarding_goes_through_the_proxy(auth_proxy, pki, cli, tmp_path):  # noqa: F811
    """`margo-lite onboard` behind the proxy: the CA download, the onboarding call, the token
    and the capabilities all go through it, and the network section survives the rewrite."""
    password_file = tmp_path / "proxy-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    path = tmp_path / "config.yaml"
    network = {
        "proxy": auth_proxy.url(USER),
        "proxy_password_file": str(password_file),
        "no_proxy": [],
    }
    path.write_text(
        yaml.safe_dump({"device": {"id": "gw-proxy", "state_dir": str(tmp_path / "state")},
                        "network": network})
    )  # fmt: skip
    fingerprint = onboarding.fingerprint(pki.ca_cert.read_bytes())
    git = {"url": "https://git.example.com/gw-proxy.git", "token": "git-token-proxy-1"}
    with simulator(
        tls=(str(pki.server_cert), str(pki.server_key)), ca_pem=pki.ca_cert.read_bytes(), git=git
    ) as sim:
        args = ("-c", str(path), "onboard", "--wos-url", sim.url, "--ca-fingerprint", fingerprint)
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert sim.onboarded[0]["deviceId"] == "gw-proxy" and "gw-proxy" in sim.capabilities
        port = _port(sim.url)
    tunnels = wait_for(lambda: len(auth_proxy.entries(port)) >= 3 and auth_proxy.entries(port))
    assert {(e.method, e.user) for e in tunnels} == {("CONNECT", USER)}
    assert yaml.safe_load(path.read_text())["network"]["proxy"] == auth_proxy.url(USER)
    assert PASSWORD not in result.stdout + result.stderr + path.read_text()
