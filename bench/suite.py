"""margo-lite's benchmark: every figure of issue 10 in one table (or JSON), on real parts.

    bench/run [--quick] [--json] [--no-engine]

It measures against C git's http-backend (behind the test bridge), the WOS simulator, real
`margo-lite run` processes and, for the latency figure, podman with a test-only
containers.conf and a locally built busybox image. Those parts come from `tests/support/`
(gitserver, engines, rig), so this script needs the test environment `tools/setup-host`
builds; `bench/gitsource.py` and `bench/plan.py` supply the repository and planning
measurements. Ratios are measured side by side in the same run, never against old numbers.
Figures only: nothing here asserts a goal, and everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dulwich  # noqa: E402
import pytest  # noqa: E402  (tests/support/engines skips with pytest.skip)
import yaml  # noqa: E402

from bench import gitsource as gitbench  # noqa: E402
from bench import goals  # noqa: E402
from bench import plan as planbench  # noqa: E402
from bench import wfm as wfmbench  # noqa: E402
from margo_lite import backends, config, desired, gitsource, logs, planner  # noqa: E402
from margo_lite.agent import Agent, Parts  # noqa: E402
from margo_lite.backends import builtin, project  # noqa: E402
from margo_lite.devkit import wossim  # noqa: E402
from margo_lite.records import DEPLOYMENTS, POLL_RECORD, load  # noqa: E402
from margo_lite.statestore import StateStore  # noqa: E402
from tests.support import engines  # noqa: E402
from tests.support.gitserver import GitServer, Request, Upstream  # noqa: E402
from tests.support.proxyserver import ForwardProxy  # noqa: E402
from tests.support.rig import Rig, app_files, deployment  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

IDLE_INTERVAL = "0.01s"
DEVICE = "gw-bench"
DEVICE_E2E = "gw-e2e"  # the device id tests/support/rig.py configures


@dataclass(frozen=True)
class Counts:
    """How much each measurement does; `--quick` shrinks them for a smoke test."""

    polls: int = 1000  # idle polls of the long-running process (RSS, CPU, disk)
    long_polls: int = 10_000  # idle polls of the same process for the RSS growth
    onces: int = 3  # `margo-lite once` runs after it, on its state_dir
    git_polls: int = 200  # in-process idle polls, plain and with 2000 extra refs
    commits: int = 1000  # upstream commits fetched one by one (state_dir size)
    extra_refs: int = 2000
    deployments: int = 100  # records of the no-change reconcile
    reconciles: int = 50
    starts: int = 3  # cold starts timed to the first poll
    updates: int = 3  # parameter updates timed from commit to Installed


QUICK = Counts(
    polls=20, long_polls=40, git_polls=10, commits=5, reconciles=5, starts=1, updates=1, onces=2
)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None  # None: not measured (see note)
    unit: str
    note: str = ""


def fig(key: str, label: str, value: float | None, unit: str, note: str = "") -> Figure:
    return Figure(key, label, value, unit, note)


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, str | int]:
    """What the figures ran on: CPUs, CPU model, RAM, kernel, Python and dulwich."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dulwich": ".".join(map(str, dulwich.__version__)),
        "git": tool_version("git"),
        "podman": tool_version("podman"),
    }


def tool_version(name: str) -> str:
    """The last word of `NAME --version`, or "absent"."""
    if not shutil.which(name):
        return "absent"
    out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.split()[-1] if out.returncode == 0 and out.stdout else "unknown"


# --- the Git repository, in-process (bench/gitsource.py) -----------------------------------


def git_figures(tmp: Path, counts: Counts) -> list[Figure]:
    """Idle poll, change fetch next to C git, 2000 extra refs, state_dir after N commits."""
    (tmp / "srv").mkdir()
    upstream = gitbench.make_upstream(tmp / "srv")
    out = []
    with GitServer(tmp / "srv") as server:
        cfg = gitbench.git_config(server, tmp)
        state = tmp / "state"
        source = gitsource.GitSource(cfg, state)
        plain = gitbench.idle_poll_cost(server, source, counts.git_polls)
        out += [
            fig(
                "idle_requests",
                "idle poll: requests",
                plain.requests,
                "requests/poll",
                f"GitSource.poll x {counts.git_polls}, counted at the server",
            ),
            fig(
                "idle_wire_bytes",
                "idle poll: bytes on the wire",
                plain.down + plain.up,
                "B/poll",
                f"HTTP with headers: {plain.down:.0f} down + {plain.up:.0f} up",
            ),
            fig(
                "idle_git_cpu_ms",
                "idle poll: CPU of GitSource.poll",
                plain.cpu_ms,
                "ms/poll",
                f"polling thread only, {counts.git_polls} polls",
            ),
        ]

        clone = tmp / "c-git"
        gitbench.shallow_clone(server, clone)
        for (label, change), key in zip(gitbench.CHANGES, ("edit", "new5"), strict=True):
            cost = gitbench.change_fetch(server, upstream, source, clone, change)
            out += [
                fig(
                    f"change_{key}_bytes",
                    f"change fetch, {label}: margo-lite",
                    cost.ours_bytes,
                    "B",
                    f"{cost.ours_requests} requests, both directions",
                ),
                fig(
                    f"change_{key}_c_git_bytes",
                    f"change fetch, {label}: git fetch --depth=1",
                    cost.c_git_bytes,
                    "B",
                    f"{cost.c_git_requests} requests, same server",
                ),
                fig(
                    f"change_{key}_ratio",
                    f"change fetch, {label}: margo-lite / C git",
                    cost.ours_bytes / cost.c_git_bytes,
                    "ratio",
                ),
            ]

        growth = gitbench.state_growth(upstream, source, state, counts.commits)
        gitbench.shallow_clone(server, tmp / "c-git-tip")
        tip = goals.c_git_tip_bytes(tmp / "c-git-tip")
        out += [
            fig(
                "state_dir_bytes",
                f"state_dir after {growth.commits} upstream commits",
                growth.final,
                "B",
                f"each fetched; {growth.start} B before",
            ),
            fig("state_dir_peak_bytes", "state_dir peak over those commits", growth.peak, "B"),
            fig(
                "anchor_c_git_tip_bytes",
                "anchor: C git's shallow clone of that tip",
                tip,
                "B",
                "git clone --bare --depth=1: .pack + .idx",
            ),
        ]

        out += proxy_figures(server, cfg, tmp, counts)

        upstream.add_refs(counts.extra_refs)
        refs = gitbench.idle_poll_cost(
            server, gitsource.GitSource(cfg, tmp / "state-refs"), counts.git_polls
        )
        ls_requests, ls_down, ls_up = gitbench.ls_remote_cost(server)
        extra = f"{counts.extra_refs} extra refs"
        out += [
            fig("refs_requests", f"idle poll, {extra}: requests", refs.requests, "requests/poll"),
            fig(
                "refs_wire_bytes",
                f"idle poll, {extra}: bytes on the wire",
                refs.down + refs.up,
                "B/poll",
                f"{refs.down:.0f} down + {refs.up:.0f} up",
            ),
            fig(
                "refs_wire_ratio",
                f"idle poll, {extra} / without: bytes",
                (refs.down + refs.up) / (plain.down + plain.up),
                "ratio",
            ),
            fig(
                "refs_cpu_ms", f"idle poll, {extra}: CPU of GitSource.poll", refs.cpu_ms, "ms/poll"
            ),
            fig(
                "refs_c_git_ls_remote_bytes",
                f"idle poll, {extra}: git ls-remote URL main",
                ls_down + ls_up,
                "B",
                f"{ls_requests} requests, for comparison",
            ),
        ]
    return out


def proxy_figures(server: GitServer, cfg: config.GitConfig, tmp: Path, counts: Counts) -> list:
    """Idle polls through a real forward proxy (squid, basic auth), direct ones as anchor."""
    keys = [
        ("proxy_idle_requests", "idle poll via proxy: requests", "requests/poll"),
        ("proxy_idle_wire_bytes", "idle poll via proxy: bytes proxy to server", "B/poll"),
        ("proxy_idle_client_bytes", "idle poll via proxy: bytes proxy to margo-lite", "B/poll"),
        ("proxy_idle_ratio", "idle poll via proxy / direct: bytes down", "ratio"),
        ("proxy_idle_cpu_ms", "idle poll via proxy: CPU of GitSource.poll", "ms/poll"),
    ]
    if not Path(ForwardProxy.squid).exists():
        return skipped(keys, "no squid (tools/setup-host installs it)")
    cost = gitbench.proxied_idle_poll_cost(server, cfg, tmp, counts.git_polls)
    d, p = cost.direct, cost.proxied
    anchor = f"direct, same run: {d.requests:.1f} requests, {d.down:.0f} B down + {d.up:.0f} B up"
    return [
        fig(keys[0][0], keys[0][1], cost.proxy_requests, keys[0][2], f"proxy's log; {anchor}"),
        fig(
            keys[1][0], keys[1][1], p.down + p.up, keys[1][2], f"{p.down:.0f} down + {p.up:.0f} up"
        ),
        fig(keys[2][0], keys[2][1], cost.proxy_down, keys[2][2], "squid's access log"),
        fig(keys[3][0], keys[3][1], cost.proxy_down / d.down, keys[3][2], "to margo-lite"),
        fig(keys[4][0], keys[4][1], p.cpu_ms, keys[4][2], f"direct, same run: {d.cpu_ms:.2f}"),
    ]


# --- real `margo-lite run` processes -------------------------------------------------------


class TimedGitServer(GitServer):
    """The test Git server, also noting when it answered each request (monotonic)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.answered: list[tuple[float, str]] = []

    def _add(self, request: Request) -> None:
        self.answered.append((time.monotonic(), request.path))  # list.append is atomic
        super()._add(request)

    def answers(self, repo: str, after: float = 0.0, start: int = 0) -> list[float]:
        """When the server answered `repo`'s requests after `after`; `start` skips the
        entries before it (a wait that looks every 2 ms must not scan 10 000 old ones)."""
        return [
            t for t, path in self.answered[start:] if path.startswith(f"/{repo}/") and t > after
        ]


@contextmanager
def private_podman(top: Path) -> Iterator[dict[str, str]]:
    """podman with an empty store of its own (engines.podman without the image): the agent's
    start-up sweep lists labelled containers there and never sees the machine's."""
    top.mkdir(parents=True)
    conf = top / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        f'[engine]\nruntime = "runc"\ntmp_dir = "{top}/tmp"\n'
        f'[network]\nnetwork_config_dir = "{top}/networks"\n'
    )
    storage = top / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{top}/root"\nrunroot = "{top}/run"\n'
    )
    env = {
        **engines.base_environ(),
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_STORAGE_CONF": str(storage),
    }
    try:
        yield env
    finally:  # listing containers creates only files there: no mount, no network
        shutil.rmtree(top, ignore_errors=True)


def volatile_dir(prefix: str) -> Path:
    """A folder on tmpfs when the machine has /dev/shm, as /run is on a gateway."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def write_config(path: Path, state: Path, run: Path, wos_url: str, git_url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "device": {"id": DEVICE, "state_dir": str(state), "runtime_dir": str(run)},
                "wos": {"url": wos_url},
                "git": {"url": git_url},
                "poll": {"interval": IDLE_INTERVAL, "jitter": 0},
                "runtime": {"engine": "podman", "compose": "builtin"},
            }
        )
    )
    return path


class AgentProcess:
    """`margo-lite run` as a user starts it; reads its RSS, CPU and disk writes from /proc."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str],
        log: Path,
        python: str = sys.executable,
        command: str = "run",
    ) -> None:
        self.started = time.monotonic()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [python, "-m", "margo_lite", "-c", str(config_path), command],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONPATH": str(ROOT)},
            )
        self.log = log

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"margo-lite run exited with {self.proc.returncode}:\n{tail}")
        return True

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_ms(self) -> float:
        """utime + stime of the process itself (not of the engine commands it ran)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1000 / os.sysconf("SC_CLK_TCK")

    def write_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        raise RuntimeError("no write_bytes in /proc io")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def first_poll_after(server: TimedGitServer, repo: str, agent: AgentProcess) -> float:
    """Seconds from the process start to the Git server answering its first request."""
    seen = len(server.answered)  # answers before the start: not looked at again
    got = wait_for(
        lambda: agent.alive() and server.answers(repo, agent.started, seen),
        timeout=120,
        interval=0.002,
        what="the first poll",
    )
    return got[0] - agent.started


def process_figures(tmp: Path, counts: Counts, env: dict[str, str]) -> list[Figure]:
    """An idle `margo-lite run` (interval 0.01 s): cold start, RSS, CPU and disk per poll,
    RSS growth over many polls; then `margo-lite once` on the same state_dir."""
    repo = "idle.git"
    (tmp / "srv").mkdir()
    Upstream(tmp / "srv" / repo).commit({"README.md": "no deployments\n"})
    volatile = volatile_dir("margo-bench-run-")
    run = volatile / "run"
    log = volatile / "agent.log"  # not on the disk: its writes would count as the agent's
    out = []
    try:
        with wossim.WosSimulator() as sim, TimedGitServer(tmp / "srv") as server:
            cfg_path = write_config(
                tmp / "config.yaml", tmp / "state", run, sim.url, server.url(repo)
            )
            runtime = StateStore(run)

            def idle_after(agent: AgentProcess, polls: int) -> int:
                """Wait for the first idle poll, then `polls` more; the RSS after them."""

                def idle() -> bool:
                    record = agent.alive() and runtime.read_json(POLL_RECORD)
                    return bool(record) and record["last_poll_result"] == "unchanged"

                wait_for(idle, timeout=120, what="the first idle poll")
                base = len(server.answers(repo))
                wait_for(
                    lambda: agent.alive() and len(server.answers(repo)) >= base + polls,
                    timeout=60 + polls,
                    interval=0.2,
                    what=f"{polls} idle polls",
                )
                assert idle(), "the desired state changed during the idle polls"
                return agent.rss_kib()

            agent = AgentProcess(cfg_path, env, log)
            try:
                starts = [first_poll_after(server, repo, agent)]
                idle_after(agent, 0)
                base = len(server.answers(repo))
                rss0, cpu0, io0 = agent.rss_kib(), agent.cpu_ms(), agent.write_bytes()
                idle_after(agent, counts.polls)
                rss1, cpu1, io1 = agent.rss_kib(), agent.cpu_ms(), agent.write_bytes()
                polls = len(server.answers(repo)) - base
                rss_long = idle_after(agent, counts.long_polls - polls)
                long_polls = len(server.answers(repo)) - base
            finally:
                agent.stop()
            for _ in range(counts.starts - 1):  # restarts on the same state_dir
                agent = AgentProcess(cfg_path, env, log)
                try:
                    starts.append(first_poll_after(server, repo, agent))
                finally:
                    agent.stop()
            once = []
            for _ in range(counts.onces):  # each a new process: a timer-driven gateway
                before = len(server.answers(repo))
                agent = AgentProcess(cfg_path, env, log, command="once")
                if agent.proc.wait(timeout=300) != 0:
                    raise RuntimeError(f"margo-lite once failed:\n{log.read_text()[-2000:]}")
                once.append(len(server.answers(repo)) - before)
            pypi = ROOT / ".venv-pypi" / "bin" / "python"
            rss_pypi = None
            if pypi.exists() and Path(sys.executable).parent != pypi.parent:
                agent = AgentProcess(cfg_path, env, log, python=str(pypi))
                try:
                    rss_pypi = idle_after(agent, counts.polls)
                finally:
                    agent.stop()
    finally:
        shutil.rmtree(volatile, ignore_errors=True)
    on = "tmpfs" if str(volatile).startswith("/dev/shm/") else "the temporary folder"
    out += [
        fig(
            "idle_process_cpu_ms",
            "idle poll: CPU of the whole agent cycle",
            (cpu1 - cpu0) / polls,
            "ms/poll",
            f"margo-lite run, utime+stime over {polls} polls",
        ),
        fig(
            "idle_disk_bytes",
            "idle poll: bytes written to disk",
            (io1 - io0) / polls,
            "B/poll",
            f"/proc/PID/io write_bytes; runtime_dir and log on {on}",
        ),
        fig("rss_start_kib", "RSS after start", rss0, "KiB", "VmRSS after the first idle poll"),
        fig("rss_polls_kib", f"RSS after {polls} polls", rss1, "KiB"),
        fig("rss_growth_kib", f"RSS growth over {polls} polls", rss1 - rss0, "KiB"),
        fig(
            "rss_growth_long_kib",
            f"RSS growth over {long_polls} polls",
            rss_long - rss0,
            "KiB",
            f"{rss_long} KiB after them",
        ),
        fig(
            "rss_polls_pypi_kib",
            f"RSS after {counts.polls} polls, PyPI dependencies",
            rss_pypi,
            "KiB",
            "the same run with .venv-pypi's python" if rss_pypi else "not measured: no .venv-pypi",
        ),
        fig(
            "cold_start_ms",
            "cold start to first poll",
            statistics.median(starts) * 1000,
            "ms",
            f"process start to the Git server's answer; median of {len(starts)}, "
            f"max {max(starts) * 1000:.0f} ms",
        ),
        fig(
            "once_requests",
            "idle `margo-lite once`: requests",
            statistics.mean(once),
            "requests/run",
            f"{len(once)} runs after `run` on the same state_dir: {once}",
        ),
    ]
    return out


# --- the no-change reconcile with 100 deployments, in-process ------------------------------


def fleet_containers(
    env: dict[str, str], records: list[planner.DeploymentRecord], device: str
) -> int:
    """One created container per recorded component, named and labelled as the built-in
    driver names and labels them, so the engine's store holds what the records say runs
    (created, not started: 300 idle containers would cost the machine, not the figure)."""
    for record in records:
        for component in record.components:
            name = project.project_name(record.id, component.name, device=device)
            labels = {
                **project.ownership_labels(record.id, component.name, device=device),
                project.SERVICE: "app",
            }
            argv = ["podman", "create", "--name", builtin.container_name(name, "app")]
            for key, value in labels.items():
                argv += ["--label", f"{key}={value}"]
            engines.run([*argv, engines.IMAGE, "sleep", "3600"], env)
    return managed_count(env)


def managed_count(env: dict[str, str]) -> int:
    out = engines.run(
        ["podman", "ps", "-a", "-q", "--filter", "label=io.margo.managed-by=margo-lite"], env
    )
    return len(out.split())


class TimedSource:
    """The agent's Git source, counting the CPU its polls take in this thread."""

    def __init__(self, source: gitsource.GitSource) -> None:
        self._source = source
        self.cpu = 0.0

    def poll(self) -> gitsource.PollResult:
        started = time.thread_time()
        try:
            return self._source.poll()
        finally:
            self.cpu += time.thread_time() - started

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)


def reconcile_figures(tmp: Path, counts: Counts, env: dict[str, str]) -> list[Figure]:
    """`Agent.reconcile()` with N Installed records and nothing changed (real parts), against
    an engine store holding their containers."""
    n = counts.deployments
    files = {f"apps/{i:04}.yaml": yaml.safe_dump(planbench.document(i)).encode() for i in range(n)}
    (tmp / "srv").mkdir()
    Upstream(tmp / "srv" / "fleet.git").commit({k: v.decode() for k, v in files.items()})
    # The records as if every component had been installed (bench/plan.py's converge).
    store = StateStore(tmp / "state")
    for record in planbench.converge(desired.parse_files(files)).values():
        assert record.state is planner.State.INSTALLED
        store.write_json(f"{DEPLOYMENTS}/{record.id}.json", record.to_json())
    stored = fleet_containers(env, list(load(store).values()), DEVICE)
    run = volatile_dir("margo-bench-run-")
    try:
        with wossim.WosSimulator() as sim, GitServer(tmp / "srv") as server:
            cfg = config.load_config(
                write_config(
                    tmp / "config.yaml", tmp / "state", run, sim.url, server.url("fleet.git")
                )
            )
            built = Parts.build(cfg)
            source = TimedSource(built.source)
            parts = dataclasses.replace(
                built,
                source=source,  # type: ignore[arg-type]
                backend_factory=lambda: backends.select(
                    cfg.runtime, cfg.state_dir, env, device=cfg.device.id
                ),
            )
            agent = Agent(cfg, parts=parts)
            agent.start()
            try:
                assert agent.observe(force=True) is None and agent.desired is not None
                assert len(agent.records) == n
                if planner.plan(agent.desired, agent.records).changes:
                    raise RuntimeError("the records do not match the desired state")
                agent.reconcile()  # the first one after a start sweeps leftovers (podman ps)
                queued = len(parts.outbox)
                times = []
                for _ in range(counts.reconciles):
                    agent.ctx.idle_plan = None  # plan anyway: what a change elsewhere costs
                    cpu = time.process_time()
                    agent.reconcile()
                    times.append((time.process_time() - cpu) * 1000)
                assert len(parts.outbox) == queued, "a no-change reconcile queued a report"
                ticks, whole = [], []
                for _ in range(counts.reconciles):  # the daemon's tick: poll due, nothing new
                    agent.ctx.timers.next_heal = time.monotonic() + 3600  # heal not due
                    source.cpu = 0.0
                    cpu = time.thread_time()
                    agent.tick(poll_now=True)
                    spent = time.thread_time() - cpu
                    whole.append(spent * 1000)
                    ticks.append((spent - source.cpu) * 1000)
                assert len(parts.outbox) == queued, "a no-change tick queued a report"
                assert all(r.state is planner.State.INSTALLED for r in agent.records.values())
                left = managed_count(env)  # the first reconcile's sweep removed none of them
            finally:
                agent.stop()
    finally:
        shutil.rmtree(run, ignore_errors=True)
    components = sum(len(r.components) for r in agent.records.values())
    return [
        fig(
            "reconcile_cpu_ms",
            f"no-change reconcile() that plans, {n} deployments",
            statistics.median(times),
            "ms CPU",
            f"{components} components Installed, {stored} containers in the engine's store "
            f"({left} after); median of {len(times)} "
            f"(max {max(times):.2f} ms), time.process_time",
        ),
        fig(
            "tick_cpu_ms",
            f"no-change tick, {n} deployments: CPU besides the poll",
            statistics.median(ticks),
            "ms CPU",
            f"Agent.tick with a poll due that finds nothing new, heal not due; median of "
            f"{len(ticks)}; with the poll {statistics.median(whole):.2f} ms, time.thread_time",
        ),
    ]


# --- commit to Installed on podman ---------------------------------------------------------


def installed_after(rig: Rig, dep_id: str, after: float) -> float:
    """When the WOS simulator received Installed for `dep_id` after `after` (monotonic)."""
    path = f"/device/{DEVICE_E2E}/deployment/{dep_id}/status"

    def seen() -> float | None:
        if rig.agent is not None and rig.agent.poll() is not None:
            raise RuntimeError(f"the agent exited:\n{rig.log_text()[-2000:]}")
        for r in rig.sim.requests(path, "POST"):
            if r.at > after and r.answer == 201:
                state = r.json()["status"]["state"]
                if state == "Failed":
                    raise RuntimeError(f"{dep_id} failed: {r.json()}")
                if state == "Installed":
                    return r.at
        return None

    return wait_for(seen, timeout=180, interval=0.01, what=f"{dep_id} Installed at the WOS")


def latency_figures(tmp: Path, counts: Counts, environ: dict[str, str]) -> list[Figure]:
    """Commit to Installed at the WOS, `margo-lite run` with a 1 s interval, podman; and the
    anchors of its bound: the wait for the next poll, podman alone, the settle window."""
    (tmp / "srv").mkdir()
    (tmp / "rig").mkdir()
    repo = "desired.git"

    def poll_wait(committed: float) -> float:
        return server.answers(repo, committed)[0] - committed

    with wossim.WosSimulator() as sim, TimedGitServer(tmp / "srv") as server:
        rig = Rig(tmp / "rig", server, environ, sim)  # interval 1s, jitter 0, builtin compose
        repo = rig.upstream.path.name
        rig.upstream.commit({"README.md": "nothing yet\n"})
        try:
            rig.start()
            wait_for(lambda: server.requests, timeout=120, what="the agent's first poll")
            port = engines.free_port()
            rig.upstream.commit(app_files(port, "v0"))
            committed = time.monotonic()
            install = installed_after(rig, "web-1", committed) - committed
            install_wait = poll_wait(committed)
            updates, waits = [], []
            for k in range(1, counts.updates + 1):
                rig.upstream.commit(
                    {"web-1.yaml": deployment("web-1", greeting=f"v{k}", port=port)}
                )
                committed = time.monotonic()
                updates.append(installed_after(rig, "web-1", committed) - committed)
                waits.append(poll_wait(committed))
            rig.stop()
        finally:
            rig.cleanup()
    alone = goals.podman_alone(environ, engines.IMAGE, engines.free_port(), runs=counts.updates)
    middle = sorted(range(len(updates)), key=updates.__getitem__)[len(updates) // 2]
    return [
        fig(
            "latency_install_s",
            "commit to Installed: new deployment",
            install,
            "s",
            "1 s poll interval, podman; includes the wait for the next poll",
        ),
        fig(
            "latency_update_s",
            "commit to Installed: parameter update",
            updates[middle],
            "s",
            f"median of {len(updates)}, max {max(updates):.2f} s; container recreated",
        ),
        fig(
            "latency_install_poll_wait_s",
            "anchor: commit to the next poll (install)",
            install_wait,
            "s",
            "the Git server's answer after the commit",
        ),
        fig(
            "latency_update_poll_wait_s",
            "anchor: commit to the next poll (that update)",
            waits[middle],
            "s",
        ),
        fig(
            "latency_install_podman_s",
            "anchor: podman alone, run -d",
            alone["latency_install_podman_s"],
            "s",
            f"same image, command and port; median of {counts.updates}",
        ),
        fig(
            "latency_update_podman_s",
            "anchor: podman alone, stop -t 1 + rm + run -d",
            alone["latency_update_podman_s"],
            "s",
            f"median of {counts.updates}",
        ),
        fig(
            "settle_s",
            "anchor: the settle window",
            config.RuntimeConfig().settle,
            "s",
            "runtime.settle (default): a start must stay up this long",
        ),
    ]


# --- the run -------------------------------------------------------------------------------


def skipped(keys_labels: list[tuple[str, str, str]], reason: str) -> list[Figure]:
    return [
        fig(key, label, None, unit, f"not measured: {reason}") for key, label, unit in keys_labels
    ]


LATENCY_FIGURES = [
    ("latency_install_s", "commit to Installed: new deployment", "s"),
    ("latency_update_s", "commit to Installed: parameter update", "s"),
    ("latency_install_poll_wait_s", "anchor: commit to the next poll (install)", "s"),
    ("latency_update_poll_wait_s", "anchor: commit to the next poll (that update)", "s"),
    ("latency_install_podman_s", "anchor: podman alone, run -d", "s"),
    ("latency_update_podman_s", "anchor: podman alone, stop -t 1 + rm + run -d", "s"),
    ("settle_s", "anchor: the settle window", "s"),
]


#: The order of the table: the issue's list.
ORDER = [
    "idle_requests",
    "idle_wire_bytes",
    "idle_disk_bytes",
    "idle_process_cpu_ms",
    "idle_git_cpu_ms",
    "change_edit_bytes",
    "change_edit_c_git_bytes",
    "change_edit_ratio",
    "change_new5_bytes",
    "change_new5_c_git_bytes",
    "change_new5_ratio",
    "proxy_idle_requests",
    "proxy_idle_wire_bytes",
    "proxy_idle_client_bytes",
    "proxy_idle_ratio",
    "proxy_idle_cpu_ms",
    "refs_requests",
    "refs_wire_bytes",
    "refs_wire_ratio",
    "refs_cpu_ms",
    "refs_c_git_ls_remote_bytes",
    "rss_start_kib",
    "rss_polls_kib",
    "rss_growth_kib",
    "rss_growth_long_kib",
    "rss_polls_pypi_kib",
    "anchor_rss_bare_kib",
    "anchor_rss_deps_kib",
    "state_dir_bytes",
    "state_dir_peak_bytes",
    "anchor_c_git_tip_bytes",
    "latency_install_s",
    "latency_update_s",
    "latency_install_poll_wait_s",
    "latency_update_poll_wait_s",
    "latency_install_podman_s",
    "latency_update_podman_s",
    "settle_s",
    "reconcile_cpu_ms",
    "tick_cpu_ms",
    "once_requests",
    "cold_start_ms",
    "anchor_python_start_ms",
    "anchor_python_deps_start_ms",
    *wfmbench.ORDER,  # the Margo 1.0 profile (bench/wfm.py)
]


def measure(counts: Counts, engine: bool, progress: Callable[[str], None]) -> list[Figure]:
    figures: list[Figure] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="margo-bench-")))
        progress("Git: idle poll, change fetch, extra refs, state_dir growth")
        (tmp / "git").mkdir()
        figures += git_figures(tmp / "git", counts)
        progress("anchors: bare python, python with the dependencies imported")
        anchors = goals.python_anchors(sys.executable, ROOT)
        figures += [
            fig("anchor_rss_bare_kib", "anchor: RSS of bare python", anchors["anchor_rss_bare_kib"],
                "KiB", "python -c, VmRSS"),
            fig("anchor_rss_deps_kib", "anchor: RSS of python with run's imports but margo_lite",
                anchors["anchor_rss_deps_kib"], "KiB",
                "the stdlib modules `run` imports + urllib3 + yaml + dulwich"),
            fig("anchor_python_start_ms", "anchor: bare python, start to exit",
                anchors["anchor_python_start_ms"], "ms", "python -c pass, median of 5"),
            fig("anchor_python_deps_start_ms", "anchor: python importing run's dependencies",
                anchors["anchor_python_deps_start_ms"], "ms",
                "start to exit; the stdlib modules `run` imports + urllib3 + yaml; median of 5"),
        ]  # fmt: skip
        progress(
            f"margo-lite run: {counts.long_polls} idle polls, {counts.starts} cold start(s), "
            f"{counts.onces} x once"
        )
        (tmp / "proc").mkdir()
        with private_podman(tmp / "podman-idle") as env:
            figures += process_figures(tmp / "proc", counts, env)
            progress(f"Margo 1.0: {counts.polls} idle polls over mTLS, {counts.onces} x once")
            v1 = wfmbench.figures(tmp / "v1", counts.polls, counts.onces, env)
            figures += [fig(*row) for row in v1]
        progress(f"reconcile(): {counts.deployments} deployments, nothing changed")
        (tmp / "fleet").mkdir()
        tar = engines.build_busybox_tar(Path(tempfile.mkdtemp(dir=tmp)))
        (tmp / "podman-fleet").mkdir()
        with engines.podman(tmp / "podman-fleet", tar) as env:
            figures += reconcile_figures(tmp / "fleet", counts, env)
        if not engine:
            figures += skipped(LATENCY_FIGURES, "--no-engine")
            return figures
        progress("podman: commit to Installed")
        try:
            (tmp / "podman").mkdir()
            environ = stack.enter_context(engines.podman(tmp / "podman", tar))
        except pytest.skip.Exception as exc:
            figures += skipped(LATENCY_FIGURES, str(exc))
            return figures
        (tmp / "latency").mkdir()
        figures += latency_figures(tmp / "latency", counts, environ)
    return figures


def render(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ratio", "s") or (unit.startswith("ms") and value < 10):
        return f"{value:.2f}"
    if unit.startswith("ms") or unit.startswith("requests"):
        return f"{value:.1f}"
    return f"{value:.0f}"  # bytes, KiB


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"margo-lite benchmark, {report['date']}{' (--quick)' if report['quick'] else ''}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, dulwich {m['dulwich']}, git {m['git']}, podman {m['podman']}",
        "",
    ]
    rows = [("figure", "value", "unit", "how")] + [
        (f["label"], render(f["value"], f["unit"]), f["unit"], f["note"]) for f in report["figures"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, (label, value, unit, note) in enumerate(rows):
        lines.append(
            f"{label:<{widths[0]}}  {value:>{widths[1]}}  {unit:<{widths[2]}}  {note}".rstrip()
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + 20))
    lines += ["", goals.table(report["goals"]), f"\ntotal time {report['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test)")
    parser.add_argument(
        "--json", action="store_true", help="JSON on stdout (the table goes to stderr)"
    )
    parser.add_argument("--no-engine", action="store_true", help="skip the podman latency figures")
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else Counts()
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"bench: {text} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    logging.getLogger(logs.LOGGER_NAME).setLevel(logging.ERROR)  # e.g. "plain http" warnings
    figures = sorted(
        measure(counts, not args.no_engine, progress), key=lambda f: ORDER.index(f.key)
    )
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "counts": dataclasses.asdict(counts),
        "seconds": round(time.monotonic() - started, 1),
        "figures": [dataclasses.asdict(f) for f in figures],
        "goals": goals.judge({f.key: f.value for f in figures}, goals.GOALS + wfmbench.GOALS),
    }
    if args.json:  # the table still goes to the reader, the JSON to the pipe
        print(table(report), file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
