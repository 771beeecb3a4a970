"""After an unclean stop, make sure every published port reaches its container.

A watchdog or OOM kill (systemd's KillMode=mixed ends the whole cgroup) takes the agent's
podman calls down with it, and no reboot follows. podman 4.3 then can leave the firewall's
port forwarding of a container it killed half-way (CNI's `CNI-HOSTPORT-DNAT`, netavark's
`NETAVARK-HOSTPORT-DNAT`) ahead of the live container's: the port forwards to a dead
address while podman reports the container running. Nothing else notices, so after such a
stop the agent looks for itself:

- an unclean stop is told by the run mark in `runtime_dir` that a clean stop removes
  (`runmark`; `runtime_dir` is tmpfs: a reboot clears it together with the firewall, so a
  reboot needs no check); the check runs after the first cycle, and again whenever a
  deployment that was failed or under way at the last check moves (`progress`): a retry
  starts its containers later, behind a rule the kill may have left;
- for every running container the agent manages and each TCP port it publishes, forwarding
  rules for that host address and port that belong to a container the engine no longer runs
  are deleted (never a rule of a container this engine runs, nor one for another address);
- then the port is probed through the host's forwarding and compared with the container's
  own address: if the container answers and the host port does not, the container is
  restarted (its forwarding is set up afresh), and probed again.

Each repair and the outcome are logged. Parsing is pure (`published`, `stale_rules`); the
commands run through an injected `run`.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from margo_lite import logs
from margo_lite.constants import COMPONENT, DEPLOYMENT, MANAGED_BY, MANAGED_BY_VALUE
from margo_lite.errors import MargoLiteError
from margo_lite.records import SETTLED
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from margo_lite.agent import Agent

log = logs.get(__name__)

MANAGED = f"{MANAGED_BY}={MANAGED_BY_VALUE}"
PROBE_TIMEOUT = 2.0
HOSTPORT_CHAINS = ("CNI-HOSTPORT-DNAT", "NETAVARK-HOSTPORT-DNAT")

Run = Callable[[list[str]], str]  # argv -> stdout; raises OSError/CalledProcessError
Probe = Callable[[str, int], bool]  # (address, port) -> whether a TCP connection opens


# --- what podman publishes --------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """One TCP port a container publishes on the host."""

    container: str  # full id
    owner: str  # deployment/component, for the log
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int

    def where(self) -> str:
        return f"{self.host_ip}:{self.host_port} of {self.owner}"


def published(inspected: list[Mapping]) -> list[Published]:
    """The TCP ports published by these containers (`podman inspect` documents)."""
    found = []
    for doc in inspected:
        settings = doc.get("NetworkSettings") or {}
        addresses = [n.get("IPAddress") for n in (settings.get("Networks") or {}).values()]
        address = next((a for a in addresses if a), settings.get("IPAddress") or "")
        labels = (doc.get("Config") or {}).get("Labels") or {}
        owner = f"{labels.get(DEPLOYMENT, '?')}/{labels.get(COMPONENT, '?')}"
        for inside, bindings in (settings.get("Ports") or {}).items():
            port, _, proto = inside.partition("/")
            if proto not in ("tcp", "") or not address or not port.isdigit():
                continue
            for binding in bindings or []:
                host_ip = binding.get("HostIp") or "127.0.0.1"
                if host_ip in ("0.0.0.0", "::", ""):
                    host_ip = "127.0.0.1"
                if ":" in host_ip or not str(binding.get("HostPort", "")).isdigit():
                    continue  # IPv6 forwarding is not checked
                found.append(
                    Published(
                        doc["Id"], owner, host_ip, int(binding["HostPort"]), address, int(port)
                    )
                )
    return found


# --- the firewall's forwarding rules ----------------------------------------------------------

#: the container id in the comment of a forwarding rule that CNI or netavark wrote
RULE_OWNER = re.compile(r'id: \\?"?([0-9a-f]{64})')
_PORTS = re.compile(r"--dports? (\S+)")
_JUMP = re.compile(r"-j (\S+)")
_DEST = re.compile(r"-d (\S+?)(?:/32)? ")


@dataclass(frozen=True)
class Rule:
    """A jump from a hostport DNAT chain to one container's own chain."""

    line: str  # as `iptables -t nat -S` prints it
    container: str
    chain: str  # the container's chain the rule jumps to


def stale_rules(nat_rules: str, port: Published, running: set[str]) -> list[Rule]:
    """Forwarding rules for `port`'s host address and port that belong to a container the
    engine does not run (from `iptables -t nat -S`)."""
    lines = nat_rules.splitlines()
    found = []
    for line in lines:
        if not line.startswith(tuple(f"-A {c} " for c in HOSTPORT_CHAINS)):
            continue
        owner, ports, jump = RULE_OWNER.search(line), _PORTS.search(line), _JUMP.search(line)
        if not owner or not ports or not jump or owner[1] in running:
            continue
        if owner[1] == port.container or not _covers(ports[1], port.host_port):
            continue
        if _targets(lines, jump[1], port):
            found.append(Rule(line, owner[1], jump[1]))
    return found


def _covers(ports: str, port: int) -> bool:
    for part in ports.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def _targets(lines: list[str], chain: str, port: Published) -> bool:
    """Whether the container chain DNATs `port`'s host address (or any address) and port."""
    for line in lines:
        if not line.startswith(f"-A {chain} ") or "DNAT" not in line:
            continue
        ports = _PORTS.search(line)
        dest = _DEST.search(line + " ")
        if (ports and _covers(ports[1], port.host_port)) and (
            dest is None or dest[1] in (port.host_ip, "0.0.0.0/0")
        ):
            return True
    return False


# --- probing and repair -----------------------------------------------------------------------


def tcp_probe(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def command_runner(environ: Mapping[str, str], timeout: float = 60) -> Run:
    def run(argv: list[str]) -> str:
        return subprocess.run(
            argv, env=dict(environ), capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    return run


@dataclass
class Outcome:
    checked: int = 0
    rules_removed: int = 0
    restarted: int = 0
    unreachable: int = 0


def check(run: Run, probe: Probe = tcp_probe, program: str = "podman") -> Outcome:
    """Repair and probe every published port of the running containers the agent manages."""
    outcome = Outcome()
    ids = run([program, "ps", "-q", "--no-trunc", "--filter", f"label={MANAGED}"]).split()
    if not ids:
        return outcome
    running = set(run([program, "ps", "-q", "--no-trunc"]).split())
    ports = published(json.loads(run([program, "inspect", *ids]) or "[]"))
    if not ports:
        return outcome
    try:
        rules = run(["iptables", "-t", "nat", "-S"])
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("port check: cannot read the firewall's forwarding rules: %s", exc)
        rules = ""
    for port in ports:
        outcome.checked += 1
        for rule in stale_rules(rules, port, running):
            _delete(run, rule)
            outcome.rules_removed += 1
            log.warning(
                "port %s: removed a forwarding rule left by container %s, which podman no "
                "longer runs",
                port.where(),
                rule.container[:12],
            )
        if not probe(port.container_ip, port.container_port):
            log.info("port %s: the container itself does not answer; not judged", port.where())
            continue
        if probe(port.host_ip, port.host_port):
            log.info("port %s reaches its container", port.where())
            continue
        log.warning("port %s goes nowhere; restarting its container", port.where())
        run([program, "restart", port.container])
        outcome.restarted += 1
        if not _answers_soon(probe, port):
            outcome.unreachable += 1
            log.error("port %s still goes nowhere after a restart", port.where())
    return outcome


def _answers_soon(probe: Probe, port: Published, tries: int = 20, pause: float = 0.5) -> bool:
    """A restarted container takes a moment to listen: probe for up to tries x pause."""
    for attempt in range(tries):
        if probe(port.host_ip, port.host_port):
            return True
        if attempt < tries - 1:
            time.sleep(pause)
    return False


def _delete(run: Run, rule: Rule) -> None:
    words = shlex.split(rule.line)
    run(["iptables", "-t", "nat", "-D", *words[1:]])
    for flag in ("-F", "-X"):  # the container's own chain, now unreferenced
        try:
            run(["iptables", "-t", "nat", flag, rule.chain])
        except (OSError, subprocess.SubprocessError):
            break


def progress(agent: Agent) -> tuple[int, bool]:
    """(the records' generation, whether every deployment is settled): one failed or under
    way may start containers later, which the check must see too."""
    records = agent.records.values()
    settled = all(r.state in SETTLED for r in records)
    return agent.ctx.book.generation, settled


def after_unclean_stop(agent: Agent) -> None:
    """The agent stopped uncleanly last time: check its published ports (podman only)."""
    log.info("checking that every published port reaches its container")
    try:
        engine = agent.backend.engine
        program, environ = engine.program, engine.environ
    except (MargoLiteError, AttributeError) as exc:  # no engine answers: nothing to check
        log.warning("port check skipped: %s", exc)
        return
    if Path(program).name != "podman":
        log.info("port check skipped: %s keeps its own forwarding", program)
        return
    try:
        outcome = check(command_runner(environ), program=program)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.error("port check failed: %s", exc)
        return
    repaired = outcome.rules_removed or outcome.restarted or outcome.unreachable
    (log.warning if repaired else log.info)(
        "port check: %d published port(s) checked, %d stale forwarding rule(s) removed, "
        "%d container(s) restarted, %d still unreachable",
        outcome.checked,
        outcome.rules_removed,
        outcome.restarted,
        outcome.unreachable,
    )
