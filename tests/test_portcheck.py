"""The port check after an unclean stop (margo_lite/portcheck.py): parsing on what podman and
iptables print, then the hazard itself on real podman and the host's real firewall: a
killed container's forwarding rule ahead of the live one's, so its port goes nowhere."""

from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import pytest

from margo_lite import config, daemon, portcheck, runmark
from margo_lite.records import State
from tests.support import engines, firewall
from tests.support.engines import IMAGE, free_port, http_get
from tests.support.rig import app_files, wait_state
from tests.support.wait import wait_for

A = "a" * 64
B = "b" * 64
OTHER = "c" * 64


def inspected(cid: str, port: int, host_ip: str = "127.0.0.1") -> dict:
    return {
        "Id": cid,
        "Config": {"Labels": {"io.margo.deployment": "web-1", "io.margo.component": "web"}},
        "NetworkSettings": {
            "Ports": {"8080/tcp": [{"HostIp": host_ip, "HostPort": str(port)}], "53/udp": None},
            "Networks": {"ml-web_default": {"IPAddress": "10.89.0.7"}},
        },
    }


def test_published_ports_from_podman_inspect():
    (port,) = portcheck.published([inspected(B, 18080)])
    assert port == portcheck.Published(B, "web-1/web", "127.0.0.1", 18080, "10.89.0.7", 8080)
    assert portcheck.published([inspected(B, 18080, host_ip="0.0.0.0")])[0].host_ip == "127.0.0.1"
    assert portcheck.published([inspected(B, 18080, host_ip="::1")]) == []
    assert portcheck.published([{"Id": B, "NetworkSettings": {}}]) == []


def test_only_rules_of_containers_not_running_for_that_address_and_port_are_stale():
    port = portcheck.published([inspected(B, 18080)])[0]
    text = "\n".join(
        firewall.cni_rules(A, 18080, "CNI-DN-dead")  # killed: stale
        + firewall.cni_rules(B, 18080, "CNI-DN-live", to="10.89.0.7")  # the live container's own
        + firewall.cni_rules(OTHER, 18081, "CNI-DN-other-port")  # another port
        + firewall.cni_rules(OTHER, 18080, "CNI-DN-other-ip", dest="127.0.0.2")  # another address
        + [
            "-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 18080 -m comment --comment "
            f'"dnat name: podman id: {A}" -j NETAVARK-DN-dead',
            "-A NETAVARK-DN-dead -p tcp -m tcp --dport 18080 -j DNAT"
            " --to-destination 10.88.0.9:8080",
        ]
    )
    stale = portcheck.stale_rules(text, port, running={B})
    assert [(r.container, r.chain) for r in stale] == [
        (A, "CNI-DN-dead"),
        (A, "NETAVARK-DN-dead"),
    ]
    # a rule of a container this engine runs is never touched, even on our port
    assert portcheck.stale_rules(text, port, running={A, B}) == []


def test_a_port_that_still_goes_nowhere_gets_its_container_restarted(caplog):
    """No stale rule to blame (another kind of leftover): the container answers on its own
    address but not through the host, so it is restarted and probed again. (The engine and
    the network are twins here: the real hazard is the slow test below.)"""
    commands: list[list[str]] = []
    answers = {
        ("ps", "-q", "--no-trunc", "--filter"): B,
        ("ps", "-q", "--no-trunc"): B,
        ("inspect",): json.dumps([inspected(B, 18080)]),
    }

    def run(argv: list[str]) -> str:
        commands.append(argv)
        if argv[0] == "iptables":
            return ""
        return next((v for k, v in answers.items() if tuple(argv[1 : 1 + len(k)]) == k), "")

    host_answers = iter([False, True])  # dead before the restart, alive after

    def probe(address: str, port: int) -> bool:
        return True if address == "10.89.0.7" else next(host_answers)

    outcome = portcheck.check(run, probe)
    assert outcome == portcheck.Outcome(checked=1, rules_removed=0, restarted=1, unreachable=0)
    assert ["podman", "restart", B] in commands
    assert "127.0.0.1:18080 of web-1/web goes nowhere; restarting" in caplog.text


def test_the_marker_tells_an_unclean_stop(tmp_path):
    run = tmp_path / "run"
    assert runmark.mark_running(run) is False  # first start (or after a reboot)
    assert runmark.mark_running(run) is True  # killed: the marker was left
    runmark.mark_stopped(run)
    assert runmark.mark_running(run) is False


# --- the hazard on real podman and the host's firewall -------------------------------------------


@pytest.mark.slow
@pytest.mark.engine
def test_a_killed_containers_rule_ahead_of_the_live_one_is_removed(tmp_path_factory, busybox_tar):
    if subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True).returncode:
        pytest.fail("iptables is not usable here (as root, apt: iptables)")
    with engines.podman(tmp_path_factory.mktemp("pod"), busybox_tar) as env:
        port = free_port()
        with firewall.stale_rule_of_a_killed_container(env, port, IMAGE) as killed:
            live = firewall.sh(["podman", "run", "-d", "--label", portcheck.MANAGED,
                        "--label", "io.margo.deployment=web-1", "--label", "io.margo.component=web",
                        "-p", f"127.0.0.1:{port}:8080", IMAGE,
                        "httpd", "-f", "-p", "8080", "-h", "/www"], env).strip()  # fmt: skip
            state = firewall.sh(["podman", "inspect", "-f", "{{.State.Status}}", live], env).strip()
            assert state == "running"
            assert http_get(port, timeout=2) is None  # the hazard: running, port goes nowhere
            outcome = portcheck.check(portcheck.command_runner(env))
            assert outcome.rules_removed == 1 and outcome.restarted == 0, outcome
            assert not [r for r in firewall.nat_rules() if killed in r]
            assert [
                r for r in firewall.nat_rules() if live in r and "HOSTPORT-DNAT" in r
            ]  # its own kept
            assert wait_for(lambda: http_get(port, timeout=2), timeout=30) == "busybox\n"
            again = portcheck.check(portcheck.command_runner(env))
            assert again.checked == 1 and again.rules_removed == again.restarted == 0


@pytest.mark.slow
@pytest.mark.engine
def test_the_agent_checks_its_ports_after_an_unclean_stop_only(rig):
    """`margo-lite run` after a kill (the marker left in runtime_dir) says so in its log and
    checks its ports; after a clean stop it does not."""
    port = free_port()
    rig.upstream.commit(app_files(port, "checked"))
    rig.start()
    wait_state(rig, "web-1", "Installed")
    assert (Path(rig.tmp) / "run" / runmark.MARKER).exists()
    assert rig.stop() == 0
    assert not (Path(rig.tmp) / "run" / runmark.MARKER).exists()
    assert "did not stop cleanly" not in rig.log_text()
    assert "port check" not in rig.log_text()
    rig.start()
    wait_for(lambda: rig.log_text().count("margo-lite started") == 2, what="the second start")
    rig.agent.kill()
    rig.agent.wait(timeout=30)
    rig.start()
    wait_for(lambda: "port check:" in rig.log_text(), timeout=60, what="the port check")
    log = rig.log_text()
    assert "the last run did not stop cleanly" in log
    assert "1 published port(s) checked" in log and f"127.0.0.1:{port}" in log
    assert (http_get(port) or "").strip() == "checked"
    assert rig.stop() == 0


class _Book:
    generation = 0


class _Agent:
    """An agent whose ticks move one deployment: Failed after the first (its install
    failed, as when a killed run left its container unremovable), Installed after the third
    (the retry started a new container, maybe behind a rule the kill left)."""

    def __init__(self, daemon_of: list) -> None:
        self.ctx = types.SimpleNamespace(book=_Book())
        self.records: dict[str, types.SimpleNamespace] = {}
        self.ticks, self._daemon_of = 0, daemon_of

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def tick(self, poll_now: bool = False) -> float:
        self.ticks += 1
        state = {1: State.FAILED, 3: State.INSTALLED}.get(self.ticks)
        if state is not None:
            self.records["c"] = types.SimpleNamespace(state=state)
            self.ctx.book.generation += 1
        if self.ticks == 5:
            self._daemon_of[0].requests.stop = True
        return 0.0


def test_after_an_unclean_stop_a_deployment_retried_later_gets_its_ports_checked(
    tmp_path, monkeypatch
):
    """Seen in the group-kill torture: the first cycle after the kill failed to install one
    deployment (its killed container could not be removed yet); the check after that cycle
    had no port of it to look at, and the retry ten seconds later started its container
    behind the killed one's rule, which nothing deleted."""
    cfg = config.parse_config(
        {
            "device": {"id": "gw", "state_dir": str(tmp_path / "s"), "runtime_dir": str(tmp_path)},
            "wos": {"url": "http://127.0.0.1:9"},
            "git": {"url": str(tmp_path / "repo.git")},
        }
    )
    runmark.mark_running(tmp_path)  # the last run was killed
    checked: list[int] = []
    monkeypatch.setattr(portcheck, "after_unclean_stop", lambda agent: checked.append(agent.ticks))
    holder: list = []
    agents: list[_Agent] = []

    def factory(cfg, **hooks):
        agents.append(_Agent(holder))
        return agents[-1]

    holder.append(daemon.Daemon("config.yaml", cfg, factory, environ={}))
    assert holder[0].run() == 0
    assert agents[0].ticks == 5
    assert checked == [1, 3]  # after the first cycle, and after the retry; settled then
