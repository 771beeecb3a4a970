"""`margo-lite run` and `once` as a user starts them: cold start, RSS, CPU and disk per idle
poll, read from /proc; the timed Git server and the private podman they run against.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench.figures import Counts, Figure, fig
from margo_lite.devkit import wossim
from margo_lite.records import POLL_RECORD
from margo_lite.statestore import StateStore
from tests.support import engines
from tests.support.gitserver import Fault, GitServer, Request, Upstream
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
IDLE_INTERVAL = "0.01s"
DEVICE = "gw-bench"


class TimedGitServer(GitServer):
    """The test Git server, also noting when each request began and when it was answered
    (monotonic)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.answered: list[tuple[float, float, str]] = []  # (began, answered, path)
        self._began = threading.local()

    def _next_fault(self) -> Fault | None:
        self._began.at = time.monotonic()  # every request asks this once, as it begins
        return super()._next_fault()

    def _add(self, request: Request) -> None:
        now = time.monotonic()
        began = getattr(self._began, "at", now)
        self.answered.append((began, now, request.path))  # list.append is atomic
        super()._add(request)

    def answers(self, repo: str, after: float = 0.0, start: int = 0) -> list[float]:
        """When the server answered `repo`'s requests after `after`; `start` skips the
        entries before it (a wait that looks every 2 ms must not scan 10 000 old ones)."""
        return [
            t for _, t, path in self.answered[start:] if path.startswith(f"/{repo}/") and t > after
        ]

    def answered_after_begun(self, repo: str, since: float) -> float:
        """When the first request of `repo` that began after `since` was answered: a poll
        that read the refs before a commit landed does not count as the next poll."""
        for began, answered, path in list(self.answered):
            if path.startswith(f"/{repo}/") and began > since:
                return answered
        raise AssertionError(f"no request of {repo} began after {since}")


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
        # Byte-compiled first, as the packages install it: a first start that compiles its
        # modules would count the compiler in its RSS (about 0.5 MiB) and in its start time.
        subprocess.run(
            [python, "-m", "compileall", "-q", str(ROOT / "margo_lite")],
            env={**env, "PYTHONPATH": str(ROOT)},
            check=True,
        )
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
            rss_restart = None
            for _ in range(counts.starts - 1):  # restarts on the same state_dir
                agent = AgentProcess(cfg_path, env, log)
                try:
                    starts.append(first_poll_after(server, repo, agent))
                    if rss_restart is None:  # the idle mark: nothing read, nothing to do
                        rss_restart = idle_after(agent, counts.polls)
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
            "rss_restart_polls_kib",
            f"RSS after {counts.polls} polls, a restart",
            rss_restart,
            "KiB",
            "the same state_dir: nothing to read or change since its start"
            if rss_restart
            else "not measured: no restart (starts = 1)",
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
