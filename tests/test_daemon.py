"""`margo-lite run` as a process: signals, reload, and the volatile poll status.

The desired-state repository holds no deployment, so no container engine is involved:
these tests are about the process, not the applications.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from margo_lite.devkit import wossim
from tests.conftest import ROOT
from tests.support.gitserver import Upstream
from tests.support.wait import wait_for

README = "# nothing deployed here\n"


class Process:
    def __init__(
        self, tmp_path: Path, wos_url: str, interval: str = "1h", git_path: str = ""
    ) -> None:
        self.tmp = tmp_path
        self.upstream = Upstream(tmp_path / "repo.git")
        if self.upstream.tip() is None:
            self.upstream.commit({"README.md": README})
        self.config = tmp_path / "config.yaml"
        self.git_path = git_path
        self.write_config(interval=interval, wos_url=wos_url)
        self.log = tmp_path / "agent.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "margo_lite", "-c", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(self.tmp)},
            )

    def write_config(self, *, interval: str, wos_url: str, extra: str = "") -> None:
        data = {
            "device": {
                "id": "gw-daemon",
                "state_dir": str(self.tmp / "state"),
                "runtime_dir": str(self.tmp / "run"),
            },
            "wos": {"url": wos_url},
            "git": {"url": str(self.tmp / "repo.git"), "path": self.git_path},
            "poll": {"interval": interval, "jitter": 0},
        }
        self.config.write_text(yaml.safe_dump(data) + extra)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, count: int = 1) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, f"agent exited: {self.text()[-2000:]}"
            return self.text().count(needle) >= count

        wait_for(seen, timeout=60, what=f"{needle!r} in the agent's log")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def agent(tmp_path):
    with wossim.WosSimulator() as sim:
        process = Process(tmp_path, sim.url)
        try:
            yield process
        finally:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(timeout=30)


def test_sigterm_stops_cleanly_with_exit_0(agent):
    agent.wait_log("desired state is at revision")
    assert agent.stop() == 0
    assert "margo-lite stopped" in agent.text()


def test_sigint_stops_cleanly_with_exit_0(agent):
    agent.wait_log("desired state is at revision")
    agent.proc.send_signal(signal.SIGINT)
    assert agent.proc.wait(timeout=60) == 0


def test_sigusr1_polls_now(agent):
    agent.wait_log("desired state is at revision")
    new = agent.upstream.commit({"README.md": README + "changed\n"})
    agent.proc.send_signal(signal.SIGUSR1)  # the interval is an hour: only the signal polls
    agent.wait_log(f"desired state is at revision {new[:12]}")
    assert agent.stop() == 0


def test_sighup_refuses_a_bad_configuration_and_keeps_running(agent):
    agent.wait_log("desired state is at revision")
    data = yaml.safe_load(agent.config.read_text())
    data["poll"]["interval"] = "never"
    agent.config.write_text(yaml.safe_dump(data))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_log("configuration not reloaded")
    assert "poll.interval" in agent.text()
    # it still works: a poll-now still polls
    new = agent.upstream.commit({"README.md": README + "after a bad reload\n"})
    agent.proc.send_signal(signal.SIGUSR1)
    agent.wait_log(f"desired state is at revision {new[:12]}")
    assert agent.stop() == 0


def test_sighup_applies_a_good_configuration(agent):
    agent.wait_log("desired state is at revision")
    wos_url = yaml.safe_load(agent.config.read_text())["wos"]["url"]
    agent.write_config(interval="1s", wos_url=wos_url)
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_log("configuration reloaded")
    # with a 1 s interval the agent now finds a new commit by itself
    new = agent.upstream.commit({"README.md": README + "found by polling\n"})
    agent.wait_log(f"desired state is at revision {new[:12]}")
    assert agent.stop() == 0


def test_idle_polls_write_nothing_to_the_state_dir(tmp_path):
    with wossim.WosSimulator() as sim:
        process = Process(tmp_path, sim.url, interval="0.2s")
        try:
            process.wait_log("desired state is at revision")
            poll_file = tmp_path / "run" / "poll.json"
            wait_for(poll_file.exists, what="the volatile poll status")

            def snapshot() -> dict[str, tuple[int, int]]:
                return {
                    str(p): (p.stat().st_size, p.stat().st_mtime_ns)
                    for p in (tmp_path / "state").rglob("*")
                    if p.is_file()
                }

            def polls(count: int) -> None:
                for _ in range(count):
                    seen = poll_file.read_bytes()
                    wait_for(lambda seen=seen: poll_file.read_bytes() != seen, what="a poll")

            polls(2)  # the first cycle (which records the applied commit) is over
            before = snapshot()
            polls(3)
            assert "unchanged" in poll_file.read_text()
            assert snapshot() == before
        finally:
            assert process.stop() == 0


def test_a_commit_that_cannot_be_read_does_not_stop_a_restart(tmp_path, cli):
    with wossim.WosSimulator() as sim:
        upstream = Upstream(tmp_path / "repo.git")
        upstream.commit({"desired": "a file where the folder should be\n"})
        process = Process(tmp_path, sim.url, git_path="desired")
        try:
            process.wait_log("not applied")
            assert process.stop() == 0
            process.start()  # the bad commit is now the one held: the agent still starts
            process.wait_log("is not applied")
            fixed = upstream.commit({"desired": None, "desired/README.md": README})
            process.proc.send_signal(signal.SIGUSR1)
            process.wait_log(f"desired state is at revision {fixed[:12]}")
        finally:
            assert process.stop() == 0


def test_a_second_agent_on_the_same_state_dir_is_refused(agent, cli):
    agent.wait_log("desired state is at revision")
    result = cli("-c", str(agent.config), "once")
    assert result.returncode == 1
    assert "STATE_BUSY" in result.stderr and "Traceback" not in result.stderr
    assert agent.stop() == 0
    assert cli("-c", str(agent.config), "once").returncode == 0
