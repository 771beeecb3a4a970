"""What watching a Margo 1.0 WFM costs: the idle poll over mutual TLS, TLS handshakes included.

    .venv-pypi/bin/python bench/wfm.py [--quick]

The WFM simulator (`devkit/wfmsim.py`, test SVIDs from `devkit/svidca.py`) sits behind a
counting TCP relay on 127.0.0.1: margo-lite talks to the relay, the relay to the simulator,
and every byte both ways is counted there, handshakes and TLS records included (the relay
never decrypts). Measured: the first idle poll of a process (a new connection, a full
handshake) in-process with the agent's own source (`cycle.desired_source`); a running
`margo-lite run` between two points where it is stopped (SIGSTOP) and the relay is quiet:
requests, bytes, handshakes, CPU and disk writes per idle poll; and `margo-lite once` runs,
each a new process and so a new handshake. The anchor is one bare mTLS handshake with the
same SVIDs through the same relay. `bench/run` prints these beside the Git figures
(`figures`, `GOALS`); figures, not assertions.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import goals  # noqa: E402
from bench.goals import Goal, short  # noqa: E402
from bench.processes import AgentProcess, private_podman, volatile_dir  # noqa: E402
from bench.relay import CountingRelay, handshake_alone  # noqa: E402
from margo_lite import config, cycle, proxy  # noqa: E402
from margo_lite.devkit.svidca import SvidCA, wfm_id  # noqa: E402
from margo_lite.devkit.wfmsim import WfmSimulator  # noqa: E402
from margo_lite.records import POLL_RECORD  # noqa: E402
from margo_lite.statestore import StateStore  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

DEVICE = "gw-bench-v1"
MANIFEST = "/api/v1/deployments"
IDLE_INTERVAL = "0.01s"

#: (key, label, unit): the rows `figures` returns, in the table's order.
ROWS = [
    ("v1_idle_requests", "v1 idle poll: requests", "requests/poll"),
    ("v1_idle_wire_bytes", "v1 idle poll, kept alive: bytes on the wire", "B/poll"),
    ("v1_idle_handshakes", "v1 idle poll, kept alive: TLS handshakes", "handshakes/poll"),
    ("v1_first_poll_wire_bytes", "v1 first idle poll of a process: bytes on the wire", "B"),
    ("anchor_v1_handshake_bytes", "anchor: one mTLS handshake alone", "B"),
    ("v1_idle_disk_bytes", "v1 idle poll: bytes written to disk", "B/poll"),
    ("v1_idle_process_cpu_ms", "v1 idle poll: CPU of the whole agent cycle", "ms/poll"),
    ("v1_idle_source_cpu_ms", "v1 idle poll, kept alive: CPU of WfmSource.poll", "ms/poll"),
    ("v1_first_poll_cpu_ms", "v1 first idle poll of a process: CPU of WfmSource.poll", "ms"),
    ("v1_once_requests", "v1 idle `margo-lite once`: requests", "requests/run"),
    ("v1_once_wire_bytes", "v1 idle `margo-lite once`: bytes on the wire", "B/run"),
    ("v1_once_handshakes", "v1 idle `margo-lite once`: TLS handshakes", "handshakes/run"),
    ("v1_once_state_bytes", "v1 idle `margo-lite once`: bytes written to state_dir", "B/run"),
    ("v1_once_cpu_ms", "v1 idle `margo-lite once`: CPU of the process", "ms/run"),
]
ORDER = [key for key, _, _ in ROWS]


def _first_poll_bound(f: Mapping[str, float | None]) -> float | None:
    parts = [f.get("anchor_v1_handshake_bytes"), f.get("v1_idle_wire_bytes")]
    return None if None in parts else 1.1 * sum(parts)  # type: ignore[arg-type]


#: Issue 17's way: each figure against a bound, anchors measured in the same run.
GOALS = [
    Goal("v1: idle poll 1 request (a conditional GET, 304)", "v1_idle_requests", "==",
         lambda f: 1),
    Goal("v1: a running agent keeps its connection (0 handshakes)", "v1_idle_handshakes", "==",
         lambda f: 0),
    Goal("v1: kept-alive idle poll <= 1 KiB on the wire", "v1_idle_wire_bytes", "<=",
         lambda f: 1024, lambda f: f"Git idle poll {_n(f.get('idle_wire_bytes'))} B, plain HTTP"),
    Goal("v1: first poll <= 1.1 x (handshake + kept-alive poll)", "v1_first_poll_wire_bytes",
         "<=", _first_poll_bound,
         lambda f: f"handshake alone {_n(f.get('anchor_v1_handshake_bytes'))} B + kept-alive "
         f"poll {_n(f.get('v1_idle_wire_bytes'))} B"),
    Goal("v1: idle poll writes 0 B", "v1_idle_disk_bytes", "==", lambda f: 0),
    Goal("v1: idle `once` writes 0 B to state_dir", "v1_once_state_bytes", "==", lambda f: 0),
    Goal("v1: idle `once` 1 handshake (a new process)", "v1_once_handshakes", "==",
         lambda f: 1),
]  # fmt: skip


def _n(value: float | None) -> str:
    return "-" if value is None else short(value)


# --- the measurements -------------------------------------------------------------------------


def write_config(path: Path, state: Path, run: Path, url: str, ca: SvidCA, device: Any) -> Path:
    """The agent's configuration for the v1 profile: the WFM as desired-state source."""
    path.write_text(
        yaml.safe_dump(
            {
                "device": {"id": DEVICE, "state_dir": str(state), "runtime_dir": str(run)},
                "wos": {
                    "api": "v1",
                    "url": url,
                    "ca_file": str(ca.ca_file),
                    "client_cert": str(device.cert),
                    "client_key": str(device.key),
                },
                "desired": {"source": "wos"},
                "poll": {"interval": IDLE_INTERVAL, "jitter": 0},
                "runtime": {"engine": "podman", "compose": "builtin"},
            }
        )
    )
    return path


def in_process(cfg_path: Path, sim: WfmSimulator, relay: CountingRelay, polls: int) -> dict:
    """The agent's own source, built as `Parts.build` does: the first idle poll of a new one
    (a new pool: a handshake) and `polls` idle polls on its kept-alive connection."""
    cfg = config.load_config(cfg_path)
    warm = cycle.desired_source(cfg, proxy.DIRECT)
    warm.poll()  # fetches the manifest into this state_dir
    warm.close()
    firsts, cpu_firsts = [], []
    for _ in range(3):
        source = cycle.desired_source(cfg, proxy.DIRECT)
        up, down, _ = relay.counts()
        cpu = time.thread_time()
        assert not source.poll().changed
        cpu_firsts.append((time.thread_time() - cpu) * 1000)
        up1, down1, _ = relay.counts()
        firsts.append((up1 - up) + (down1 - down))
        source.close()
    source = cycle.desired_source(cfg, proxy.DIRECT)
    source.poll()
    handshakes = sim.handshakes
    cpu = time.thread_time()
    for _ in range(polls):
        assert not source.poll().changed
    cpu_ms = (time.thread_time() - cpu) * 1000 / polls
    assert sim.handshakes == handshakes, "a kept-alive source made a new connection"
    source.close()
    return {
        "first": statistics.median(firsts),
        "first_cpu": statistics.median(cpu_firsts),
        "steady_cpu": cpu_ms,
    }


class Paused:
    """A snapshot of `margo-lite run` taken while it is stopped and the relay is quiet."""

    def __init__(self, agent: Any, sim: WfmSimulator, relay: CountingRelay) -> None:
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(relay.quiet, interval=0.01, what="the relay to go quiet")
            self.polls = len(sim.requests(MANIFEST, "GET"))
            self.requests = len(sim.requests())
            self.answers = [r.answer for r in sim.requests()]
            self.up, self.down, _ = relay.counts()
            self.handshakes = sim.handshakes
            self.cpu_ms, self.io = agent.cpu_ms(), agent.write_bytes()
        finally:
            agent.proc.send_signal(signal.SIGCONT)


def running(cfg_path: Path, run: Path, sim, relay, polls: int, env, log: Path) -> dict:
    """`polls` idle polls of a running `margo-lite run`, between two paused snapshots."""
    runtime = StateStore(run)
    agent = AgentProcess(cfg_path, env, log)
    try:

        def idle() -> bool:
            record = agent.alive() and runtime.read_json(POLL_RECORD)
            return bool(record) and record["last_poll_result"] == "unchanged"

        wait_for(idle, timeout=120, what="the first idle v1 poll")
        before = Paused(agent, sim, relay)
        wait_for(
            lambda: agent.alive() and len(sim.requests(MANIFEST, "GET")) >= before.polls + polls,
            timeout=60 + polls,
            interval=0.1,
            what=f"{polls} idle v1 polls",
        )
        after = Paused(agent, sim, relay)
        assert idle(), "the desired state changed during the idle polls"
    finally:
        agent.stop()
    n = after.polls - before.polls
    window = after.answers[len(before.answers) :]
    return {
        "polls": n,
        "requests": (after.requests - before.requests) / n,
        "not_304": sum(1 for a in window if a != 304),
        "up": (after.up - before.up) / n,
        "down": (after.down - before.down) / n,
        "handshakes": (after.handshakes - before.handshakes) / n,
        "cpu_ms": (after.cpu_ms - before.cpu_ms) / n,
        "disk": (after.io - before.io) / n,
    }


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file below `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def onces(cfg_path: Path, state: Path, sim, relay, runs: int, env, log: Path) -> dict:
    """`runs` idle `margo-lite once` processes: requests, bytes, handshakes, state_dir
    bytes written (files new or changed) and CPU (utime+stime of the child)."""
    rows = []
    for _ in range(runs):
        requests, handshakes = len(sim.requests()), sim.handshakes
        up, down, _ = relay.counts()
        files = tree(state)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "ab") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "margo_lite", "-c", str(cfg_path), "once"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONPATH": str(ROOT)},
                timeout=300,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"margo-lite once failed:\n{log.read_text()[-2000:]}")
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        wait_for(lambda: relay.open == 0, what="the relay to close once's connections")
        up1, down1, _ = relay.counts()
        now = tree(state)
        seen = sim.requests()[requests:]
        rows.append(
            {
                "requests": len(seen),
                "what": sorted({f"{r.method} {r.path} {r.answer}" for r in seen}),
                "bytes": (up1 - up) + (down1 - down),
                "handshakes": sim.handshakes - handshakes,
                "state": sum(size for p, (size, _) in now.items() if files.get(p) != now[p]),
                "cpu_ms": (used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime) * 1000,
            }
        )
    return {k: [r[k] for r in rows] for k in rows[0]}


@contextmanager
def wfm_behind_relay(tmp: Path) -> Iterator[tuple[SvidCA, Any, WfmSimulator, CountingRelay]]:
    """A trust domain, the simulator serving an empty desired state, the relay before it."""
    ca = SvidCA(tmp / "trust-domain")
    server, device = ca.wfm(), ca.device(DEVICE)
    with WfmSimulator(
        str(server.cert), str(server.key), str(ca.ca_file), wfm_id=wfm_id(), prefix="/margo"
    ) as sim:
        sim.publish({})
        where = urllib.parse.urlsplit(sim.url)
        with CountingRelay((str(where.hostname), int(where.port or 443))) as relay:
            yield ca, device, sim, relay


def figures(tmp: Path, polls: int, runs: int, env: dict[str, str]) -> list:
    """(key, label, value, unit, note) rows, in ROWS order; `env` runs podman (an empty
    private store). runtime_dir and the log go to tmpfs: their writes are not state_dir's."""
    volatile = volatile_dir("margo-bench-v1-")
    try:
        return _figures(tmp, polls, runs, env, volatile)
    finally:
        shutil.rmtree(volatile, ignore_errors=True)


def _figures(tmp: Path, polls: int, runs: int, env: dict[str, str], volatile: Path) -> list:
    tmp.mkdir(parents=True, exist_ok=True)
    run, log = volatile / "run-v1", volatile / "agent-v1.log"
    with wfm_behind_relay(tmp) as (ca, device, sim, relay):
        url = f"https://127.0.0.1:{relay.port}/margo"
        anchor = handshake_alone(relay, ca.ca_file, device.cert, device.key)
        ours = in_process(
            write_config(tmp / "inproc.yaml", tmp / "state-inproc", run, url, ca, device),
            sim,
            relay,
            polls,
        )
        cfg_path = write_config(tmp / "config.yaml", tmp / "state", run, url, ca, device)
        agent = running(cfg_path, run, sim, relay, polls, env, log)
        once = onces(cfg_path, tmp / "state", sim, relay, runs, env, log)
        tls = {r.tls_version for r in sim.requests()}
    mean = statistics.mean
    values = {
        "v1_idle_requests": (
            agent["requests"],
            f"margo-lite run, {agent['polls']} polls counted at the WFM simulator; "
            f"{agent['not_304']} not answered 304",
        ),
        "v1_idle_wire_bytes": (
            agent["up"] + agent["down"],
            f"counting TCP relay, TLS records: {agent['down']:.0f} down + {agent['up']:.0f} up",
        ),
        "v1_idle_handshakes": (
            agent["handshakes"],
            "counted by the simulator: the urllib3 pool keeps the connection",
        ),
        "v1_first_poll_wire_bytes": (
            ours["first"],
            f"a new source and pool, as a new process has: full handshake ({', '.join(tls)}) "
            "+ the 304; median of 3",
        ),
        "anchor_v1_handshake_bytes": (anchor, "stdlib ssl, the same SVIDs, through the relay"),
        "v1_idle_disk_bytes": (agent["disk"], "/proc/PID/io write_bytes; runtime_dir on tmpfs"),
        "v1_idle_process_cpu_ms": (agent["cpu_ms"], "margo-lite run, utime+stime"),
        "v1_idle_source_cpu_ms": (ours["steady_cpu"], f"polling thread only, {polls} polls"),
        "v1_first_poll_cpu_ms": (ours["first_cpu"], "polling thread, handshake included"),
        "v1_once_requests": (mean(once["requests"]), f"{runs} runs: {once['what'][0]}"),
        "v1_once_wire_bytes": (mean(once["bytes"]), f"each run: {once['bytes']}"),
        "v1_once_handshakes": (mean(once["handshakes"]), "each a new process"),
        "v1_once_state_bytes": (mean(once["state"]), "files new or changed, size and mtime"),
        "v1_once_cpu_ms": (
            mean(once["cpu_ms"]),
            "utime+stime of the child, Python's start included",
        ),
    }
    return [(key, label, values[key][0], unit, values[key][1]) for key, label, unit in ROWS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 polls, 2 `once` runs")
    args = parser.parse_args()
    polls, runs = (20, 2) if args.quick else (1000, 3)
    with tempfile.TemporaryDirectory(prefix="bench-v1-") as tmp_name:
        tmp = Path(tmp_name)
        with private_podman(tmp / "podman") as env:
            rows = figures(tmp / "v1", polls, runs, env)
    for _key, label, value, unit, note in rows:
        print(f"{label:<56} {value:>9.2f}  {unit:<16} {note}")
    print()
    print(goals.table(goals.judge({key: value for key, _, value, _, _ in rows}, GOALS)))


if __name__ == "__main__":
    main()
