"""The host firewall's port forwarding that a test's podman store leaves behind.

A podman call killed half-way (the torture's group kills, a test's timeout) can leave its
container's forwarding rules (CNI's `CNI-HOSTPORT-DNAT` jump and `CNI-DN-…` chain) in the
host's firewall after the container is gone. The firewall is the host's, not the store's:
such a rule outlives the test, and every later connection to 127.0.0.1 on that port is
sent to a dead address, whoever listens there then. The tests' ports come from the
ephemeral range (port 0), so a later test's server that the kernel happens to put on that
port is refused (ECONNREFUSED) for no reason of its own.

So each store logs its events to a file of its own, and `drop_leftovers` deletes the rules
of every container the store created that podman no longer has (by container id: a 64-hex
id never names another store's container). `leftover_rules` is the pure part.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from margo_lite import portcheck

EVENTS_LOG = "events.log"  # in the store's folder, beside its containers.conf
_JUMP = re.compile(r" -j ((?:CNI|NETAVARK)-\S+)")
_SHARED = ("CNI-HOSTPORT-", "NETAVARK-HOSTPORT-")  # every container's: never dropped


def events_log(environ: dict[str, str]) -> Path:
    return Path(environ["CONTAINERS_CONF"]).parent / EVENTS_LOG


def created(log: Path) -> set[str]:
    """The ids of every container the store's event log says it created."""
    if not log.exists():
        return set()
    ids = set()
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("Type") == "container" and event.get("Status") == "create":
            ids.add(event.get("ID"))
    return ids


def leftover_rules(nat_rules: str, gone: set[str]) -> tuple[list[str], list[str]]:
    """(rules naming a gone container, the containers' own chains they jump to) in
    `iptables -t nat -S`."""
    rules, chains = [], []
    for line in nat_rules.splitlines():
        owner = portcheck.RULE_OWNER.search(line)
        if not line.startswith("-A ") or not owner or owner[1] not in gone:
            continue
        rules.append(line)
        jump = _JUMP.search(line)
        if jump and not jump[1].startswith(_SHARED) and jump[1] not in chains:
            chains.append(jump[1])
    return rules, chains


def drop_leftovers(environ: dict[str, str]) -> list[str]:
    """Delete the forwarding of the store's containers that podman no longer has; the
    rules deleted."""
    gone = created(events_log(environ))
    if not gone or not shutil.which("iptables"):
        return []
    known = subprocess.run(
        ["podman", "ps", "-a", "-q", "--no-trunc"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if known.returncode != 0:  # which are gone is not known: none is dropped
        return []
    gone -= set(known.stdout.split())
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    rules, chains = leftover_rules(nat.stdout, gone)
    for rule in rules:
        _iptables("-D", *shlex.split(rule)[1:])
    for chain in chains:
        _iptables("-F", chain)
        _iptables("-X", chain)
    return rules


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", "-t", "nat", *args], capture_output=True, timeout=60)


# --- a leftover made on purpose, for the tests of the port check and of this module ---


def cni_rules(cid: str, port: int, chain: str, dest: str = "127.0.0.1", to: str = "10.89.0.5"):
    return [
        f'-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"podman\\" id: '
        f'\\"{cid}\\"" -m multiport --dports {port} -j {chain}',
        f"-A {chain} -s 10.88.0.0/16 -d {dest}/32 -p tcp -m tcp --dport {port} "
        "-j CNI-HOSTPORT-SETMARK",
        f"-A {chain} -d {dest}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {to}:8080",
    ]


def sh(argv: list[str], env: dict | None = None) -> str:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout


def nat_rules() -> list[str]:
    return sh(["iptables", "-t", "nat", "-S"]).splitlines()


@contextlib.contextmanager
def stale_rule_of_a_killed_container(env: dict, port: int, image: str) -> Iterator[str]:
    """What a kill during `podman run`/`rm` leaves: container A (of `image`, serving httpd)
    has a forwarding rule, A is gone, and the rule is put back ahead of every other rule.
    Yields A's id; deletes what is left of it after."""
    labels = ["--label", portcheck.MANAGED]
    a = sh(["podman", "run", "-d", *labels, "-p", f"127.0.0.1:{port}:8080", image,
             "httpd", "-f", "-p", "8080", "-h", "/www"], env).strip()  # fmt: skip
    rules = nat_rules()
    (jump,) = [r for r in rules if r.startswith("-A CNI-HOSTPORT-DNAT ") and a in r]
    chain = jump.split(" -j ")[-1].strip()
    own = [r for r in rules if r.startswith(f"-A {chain} ")]
    sh(["podman", "rm", "-f", "-t", "0", a], env)
    sh(["iptables", "-t", "nat", "-N", chain])
    try:
        for rule in own:
            sh(["iptables", "-t", "nat", *shlex.split(rule)])
        words = shlex.split(jump)
        sh(["iptables", "-t", "nat", "-I", words[1], "1", *words[2:]])
        yield a
    finally:  # the host's firewall as found, whatever the test did
        for rule in [r for r in nat_rules() if a in r]:
            subprocess.run(["iptables", "-t", "nat", "-D", *shlex.split(rule)[1:]], check=False)
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, check=False)
