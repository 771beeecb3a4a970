"""The agent end to end behind a site proxy: real squid on 127.0.0.1, C git's http-backend,
the WOS simulator, a package server and podman.

What a site's administrator checks: the proxy's access log lists every request the Git
server, the WOS and the package server saw (Git poll and fetch, the package download, status
reports, capabilities), and none of a `no_proxy` host's; a wrong proxy password or a dead
proxy is a coded error in the agent's output while the running app is left alone.
"""

from __future__ import annotations

import pytest

from tests.support.engines import IMAGE, free_port, http_get
from tests.support.pkgfixtures import make_tar
from tests.support.pkgserver import PackageServer
from tests.support.proxyserver import ForwardProxy
from tests.support.rig import APP, deployment, wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

USER, PASSWORD = "gw-e2e-proxy", "e2e-proxy-pass-41c7"


def _seen_equals_logged(seen, logged, what: str) -> None:
    """squid writes a line when a request ends: wait until every request is there."""

    def same():
        counts = (seen(), len(logged()))
        assert counts[0] == counts[1], (
            f"{what}: servers saw {counts[0]}, the proxy logged {counts[1]}"
        )
        return counts[0] > 0

    wait_for(same, timeout=60, what=f"{what} in the proxy's log")


@pytest.mark.parametrize("with_auth", [False, True], ids=["open", "auth"])
def test_the_whole_scenario_goes_through_the_proxy(rig, git_server, tmp_path, with_auth):
    port = free_port()
    with (
        ForwardProxy(auth=(USER, PASSWORD) if with_auth else None) as fwd,
        PackageServer(None) as pkg,
    ):
        package = pkg.put(
            "/web.tgz", make_tar([("compose.yaml", APP.format(image=IMAGE).encode())])
        )
        password_file = tmp_path / "proxy-password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        network = {"proxy": fwd.url(USER if with_auth else None), "no_proxy": []}
        if with_auth:
            network["proxy_password_file"] = str(password_file)
        rig.configure({"network": network})
        rig.upstream.commit(
            {"web-1.yaml": deployment("web-1", greeting="proxied", port=port, package=package)}
        )
        rig.start()
        wait_state(rig, "web-1", "Installed")
        assert (wait_for(lambda: http_get(port), what="the app") or "").strip() == "proxied"
        wait_for(lambda: rig.sim.requests("/device/gw-e2e/capabilities"), what="capabilities")
        assert rig.stop() == 0  # every connection closed: squid has logged every request

        repo = f"/{rig.upstream.path.name}/"
        git_seen = lambda: len([r for r in git_server.log if repo in r.path])  # noqa: E731
        git_logged = lambda: [e for e in fwd.entries(git_server.port) if repo in e.url]  # noqa: E731
        _seen_equals_logged(git_seen, git_logged, "Git requests")
        wos_port = int(rig.sim.url.rsplit(":", 1)[1])
        _seen_equals_logged(lambda: len(rig.sim.requests()), lambda: fwd.entries(wos_port), "WOS")
        _seen_equals_logged(lambda: pkg.requests("/web.tgz"), lambda: fwd.entries(pkg.port), "pkg")
        assert {e.method for e in git_logged()} >= {"POST"}  # ls-refs and fetch
        paths = {e.url.split("/", 3)[3] for e in fwd.entries(wos_port)}
        assert {"device/gw-e2e/capabilities", "device/gw-e2e/deployment/web-1/status"} <= paths
        assert pkg.downloads("/web.tgz") == 1
        if with_auth:
            assert {e.user for e in fwd.entries()} == {USER}
            assert PASSWORD not in rig.log_text()

        logged = len(fwd.entries())
        if with_auth:  # a wrong password: PROXY_AUTH_FAILED, and nothing else changes
            password_file.write_text("not-the-password\n")
            wos_before = len(rig.sim.requests())
            result = rig.once()
            assert "PROXY_AUTH_FAILED" in result.stderr, result.stderr[-3000:]
            assert f"http://{USER}:***@127.0.0.1:{fwd.port}" in result.stderr
            assert "not-the-password" not in result.stderr
            assert len(rig.sim.requests()) == wos_before
            assert {e.status for e in fwd.entries()[logged:]} == {407}
        else:  # no_proxy: the same servers, reached directly
            rig.configure({"network": {"no_proxy": ["127.0.0.1"]}})
            result = rig.once()
            assert result.returncode == 0, result.stderr[-3000:]
            assert fwd.entries()[logged:] == []
        assert (http_get(port) or "").strip() == "proxied"
        assert len(rig.running("web-1")) == 1
        assert rig.last("web-1")["status"]["state"] == "Installed"

    # the proxy is gone: PROXY_UNREACHABLE, the app still runs
    rig.configure({"network": {"no_proxy": []}})
    result = rig.once()
    assert "PROXY_UNREACHABLE" in result.stderr, result.stderr[-3000:]
    assert (http_get(port) or "").strip() == "proxied"
