"""The tests' podman stores leave nothing in the host's firewall (tests/support/firewall.py).

A forwarding rule of a container killed half-way outlives the test's store; a later test's
server that the kernel puts on that port (port 0: the ephemeral range the tests' published
ports come from too) is then refused on every connection. Once seen in CI: the WOS
simulator of tests/test_agent_families.py, on the port of a rule a torture run had left,
refused every report.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

from tests.support import engines, firewall
from tests.support.engines import IMAGE, free_port, http_get

A, B = "a" * 64, "b" * 64


def test_only_the_rules_of_gone_containers_are_leftovers():
    postrouting = (
        '-A POSTROUTING -s 10.89.4.3/32 -m comment --comment "name: \\"ml-x_default\\" id: '
        f'\\"{A}\\"" -j CNI-7b0a2a598eaa11ee151715d3'
    )
    text = "\n".join(
        [
            "-N CNI-DN-dead",
            "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
            *firewall.cni_rules(A, 35201, "CNI-DN-dead"),
            *firewall.cni_rules(B, 35202, "CNI-DN-live"),
            postrouting,
        ]
    )
    rules, chains = firewall.leftover_rules(text, {A})
    assert rules == [firewall.cni_rules(A, 35201, "CNI-DN-dead")[0], postrouting]
    assert chains == ["CNI-DN-dead", "CNI-7b0a2a598eaa11ee151715d3"]
    assert firewall.leftover_rules(text, set()) == ([], [])


def _reachable(port: int) -> bool:
    """Whether a server of this process listening on 127.0.0.1:port can be reached."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return False
        return True


@pytest.mark.slow
@pytest.mark.engine
def test_a_killed_containers_forwarding_goes_with_the_test_and_the_store(
    tmp_path_factory, busybox_tar
):
    if subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True).returncode:
        pytest.fail("iptables is not usable here (as root, apt: iptables)")
    live_port, port, later_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as restore:  # the firewall as found, whatever happens
        with engines.podman(tmp_path_factory.mktemp("pod"), busybox_tar) as env:
            live = firewall.sh(["podman", "run", "-d", "-p", f"127.0.0.1:{live_port}:8080", IMAGE,
                        "httpd", "-f", "-p", "8080", "-h", "/www"], env).strip()  # fmt: skip
            killed = restore.enter_context(
                firewall.stale_rule_of_a_killed_container(env, port, IMAGE)
            )
            assert not _reachable(port)  # the hazard: anyone's server on that port is refused
            dropped = firewall.drop_leftovers(env)  # as each test's rig does at its end
            assert dropped and all(killed in r for r in dropped)
            assert not [r for r in firewall.nat_rules() if killed in r]
            assert _reachable(port)
            assert [
                r for r in firewall.nat_rules() if live in r and "HOSTPORT-DNAT" in r
            ]  # its own kept
            assert http_get(live_port) == "busybox\n"
            later = restore.enter_context(
                firewall.stale_rule_of_a_killed_container(env, later_port, IMAGE)
            )
        # the store's end: its containers gone, their forwarding with them
        assert not [r for r in firewall.nat_rules() if later in r or live in r]
        assert _reachable(later_port) and _reachable(live_port)
