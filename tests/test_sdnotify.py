"""sd_notify over a real unix datagram socket the test listens on, as systemd would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite import sdnotify
from tests.conftest import ROOT, base_config
from tests.support.wait import wait_for


class Listener:
    """The systemd side: a bound datagram socket and its `$NOTIFY_SOCKET` spelling."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name

    def recv(self, timeout: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    yield Listener(sock, str(path))
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"margo-lite-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    yield Listener(sock, "@" + name)
    sock.close()


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = sdnotify.Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    results = [notifier.ready("up"), notifier.watchdog(), notifier.reloading()]
    results += [notifier.stopping(), notifier.status("x")]
    assert results == [False] * 5


def test_ready_with_status_reaches_a_path_socket(listener: Listener) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": listener.name})
    assert notifier.ready("polling every 60s")
    assert listener.recv() == {"READY": "1", "STATUS": "polling every 60s"}
    notifier.close()


def test_abstract_socket(abstract_listener: Listener) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": abstract_listener.name})
    assert notifier.stopping()
    assert abstract_listener.recv() == {"STOPPING": "1"}


def test_status_is_folded_to_one_line(listener: Listener) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": listener.name})
    notifier.status("two\nlines\nREADY=1")
    assert listener.recv() == {"STATUS": "two lines READY=1"}


def test_reloading_carries_the_monotonic_clock(listener: Listener) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": listener.name})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    message = listener.recv()
    assert message["RELOADING"] == "1"
    assert int(message["MONOTONIC_USEC"]) >= before


def test_watchdog_interval_is_half_of_watchdog_sec(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "30000000"}
    notifier = sdnotify.Notifier.from_environ(env)
    assert notifier.watchdog_interval() == 15.0
    assert notifier.watchdog()
    assert listener.recv() == {"WATCHDOG": "1"}


@pytest.mark.parametrize(
    ("usec", "pid"),
    [("0", None), ("abc", None), ("", None), ("1000000", "1"), ("1000000", "x")],
)
def test_no_watchdog_unless_meant_for_this_process(
    listener: Listener, usec: str, pid: str | None
) -> None:
    env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = pid
    notifier = sdnotify.Notifier.from_environ(env)
    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()


def test_watchdog_pid_of_this_process_counts(listener: Listener) -> None:
    env = {
        "NOTIFY_SOCKET": listener.name,
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    assert sdnotify.Notifier.from_environ(env).watchdog_interval() == 1.0


def test_process_environment_is_cleared_for_children(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = sdnotify.Notifier.from_environ()
    assert notifier.watchdog_interval() == 2.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


def test_a_given_mapping_is_left_alone(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.name}
    sdnotify.Notifier.from_environ(env)
    assert env == {"NOTIFY_SOCKET": listener.name}


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_addresses_disable_notification(value: str) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None


def test_a_dead_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("still not there")


# --- the agent under a real $NOTIFY_SOCKET ----------------------------------------------------


def _git_repo(path: Path) -> str:
    """An empty desired state: a repository with one commit, as a file:// URL."""
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "-c",
        "init.defaultBranch=main",
    ]
    subprocess.run([*git, "init", "-q", str(path)], check=True)
    subprocess.run(
        [*git, "-C", str(path), "commit", "-q", "--allow-empty", "-m", "empty"], check=True
    )
    return path.as_uri()


def _messages_until_quiet(listener: Listener, quiet: float, limit: int) -> list[dict[str, str]]:
    """Read messages until none arrives for `quiet` seconds; fail past `limit` messages."""
    seen: list[dict[str, str]] = []
    while True:
        try:
            seen.append(listener.recv(timeout=quiet))
        except TimeoutError:
            return seen
        assert len(seen) <= limit, f"still receiving after {limit} messages: {seen[-3:]}"


def test_agent_reports_ready_then_watchdog_pings_that_stop_when_its_loop_hangs(
    tmp_path: Path, listener: Listener
) -> None:
    data = base_config(tmp_path)
    data["git"]["url"] = _git_repo(tmp_path / "desired")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    hang = tmp_path / "hang"
    env = {k: v for k, v in os.environ.items() if k != "MARGO_LITE_CONFIG"}
    env.update(
        PYTHONPATH=str(ROOT),
        NOTIFY_SOCKET=listener.name,
        WATCHDOG_USEC="1000000",  # a ping every 0.5 s
        MARGO_LITE_TEST_HANG_FILE=str(hang),
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "margo_lite", "-c", str(config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = wait_for(
            lambda: _ready_or_exit(listener, agent), timeout=60, interval=0, what="READY=1"
        )
        assert first.get("READY") == "1", first
        for _ in range(3):  # periodic pings (status lines may come in between)
            _messages_until(listener, "WATCHDOG", limit=10)

        hang.touch()
        # Pings already on their way may still arrive; then silence for many intervals.
        _messages_until_quiet(listener, quiet=3.0, limit=20)
        assert agent.poll() is None, "the agent exited instead of hanging"

        hang.unlink()
        _messages_until(listener, "WATCHDOG", limit=10)

        agent.send_signal(signal.SIGHUP)
        after_hup = _messages_until(listener, "READY", limit=40)
        assert any(m.get("RELOADING") == "1" for m in after_hup), after_hup
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        finally:
            agent.kill()
            agent.wait()
            agent.stderr.close()


def _ready_or_exit(listener: Listener, agent: subprocess.Popen) -> dict[str, str] | None:
    """The first message; `EXITED` once the agent has exited without sending one."""
    try:
        return listener.recv(timeout=0.2)
    except TimeoutError:
        return {"EXITED": "1"} if agent.poll() is not None else None


def _messages_until(listener: Listener, key: str, limit: int) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    while not seen or key not in seen[-1]:
        assert len(seen) < limit, f"no {key} in {limit} messages: {seen[-3:]}"
        seen.append(listener.recv(timeout=10))
    return seen
