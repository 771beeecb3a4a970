"""Fetches and reads in a forked child (margo_lite/git/forked.py): values and coded errors
cross back as raised; any other end of the child is GIT_CHILD_FAILED and the agent's
process goes on. The source's part runs against C git's http-backend on 127.0.0.1."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from margo_lite import errors, logs
from margo_lite.config import GitConfig
from margo_lite.errors import ConfigError, GitError, GitTransientError, StateCorruptError
from margo_lite.git import forked
from margo_lite.gitsource import GitSource
from margo_lite.source import PollResult
from tests.support.gitserver import DEPLOYMENT, Fault, GitServer, Upstream
from tests.support.wait import wait_for


def test_a_value_crosses_back_and_the_child_changes_nothing_here():
    seen: list[int] = []

    def step() -> dict[str, bytes]:
        seen.append(os.getpid())
        return {"a.yaml": b"\x00\xff", "b/c.yaml": b""}

    assert forked.call(step, "reads") == {"a.yaml": b"\x00\xff", "b/c.yaml": b""}
    assert seen == []  # the step ran in another process


@pytest.mark.parametrize(
    "error",
    [
        GitError("no such folder", code="GIT_PATH_INVALID"),
        GitTransientError("cut", code="GIT_PACK_INVALID"),
        StateCorruptError("bad record"),
    ],
)
def test_a_coded_error_is_raised_again_with_its_class_code_and_message(error):
    def step() -> None:
        raise error

    with pytest.raises(type(error)) as raised:
        forked.call(step, "reads")
    assert (type(raised.value), raised.value.code, raised.value.message) == (
        type(error),
        error.code,
        error.message,
    )


def test_an_error_with_fields_of_its_own_keeps_its_code_message_and_family():
    error = ConfigError("not a valid branch name", key="git.branch")

    def step() -> None:
        raise error

    with pytest.raises(GitError) as raised:  # ConfigError's key could not cross
        forked.call(step, "reads")
    assert (raised.value.code, raised.value.message) == (error.code, error.message)
    assert errors.family(raised.value) is errors.StalledError


def test_a_log_lock_held_at_the_fork_is_free_in_the_child():
    """The watchdog feeder thread may hold the secrets' lock when the agent forks."""
    logs.register_secret("s3cr3t-token")
    answers: list[str] = []
    with logs._lock:  # held here at the fork, as by another thread
        worker = threading.Thread(
            target=lambda: answers.append(forked.call(lambda: logs.redact("s3cr3t-token"), "x"))
        )
        worker.start()
        worker.join(timeout=30)
    try:
        assert answers == [logs.MASK]
    finally:
        if worker.is_alive():  # the child hangs on the lock: end it, so the test ends
            for pid in children():
                os.kill(pid, signal.SIGKILL)
            worker.join(timeout=30)


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def leaves() -> None:
    sys.exit(3)  # must not run the parent's exit handlers nor its pytest


def fails() -> None:
    raise ValueError("a surprise in dulwich")


def killed_realtime() -> None:
    os.kill(os.getpid(), signal.SIGRTMIN + 1)  # no name in signal.Signals


@pytest.mark.parametrize(
    ("step", "says"),
    [
        (killed, "ended without an answer (killed by signal SIGKILL)"),
        (leaves, "ended without an answer (exit status 1)"),
        (fails, "failed: ValueError: a surprise in dulwich"),
        (killed_realtime, f"ended without an answer (killed by signal {signal.SIGRTMIN + 1})"),
    ],
)
def test_any_other_end_of_the_child_is_a_coded_transient_error(step, says):
    with pytest.raises(GitTransientError) as raised:
        forked.call(step, "fetches abc")
    assert raised.value.code == "GIT_CHILD_FAILED"
    assert f"the process that fetches abc {says}" in raised.value.message


def test_a_child_that_cannot_start_is_a_coded_transient_error(monkeypatch):
    """The system refusing a process (EAGAIN) cannot be brought about here without starving
    the machine: `os.fork` is made to fail as it would."""

    def refuse() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "fork", refuse)
    opened = len(os.listdir("/proc/self/fd"))
    with pytest.raises(GitTransientError) as raised:
        forked.call(lambda: None, "fetches abc")
    assert raised.value.code == "GIT_CHILD_FAILED"
    assert "cannot start the process that fetches abc" in raised.value.message
    assert len(os.listdir("/proc/self/fd")) == opened  # the pipe was closed


def children() -> set[int]:
    """The live child processes of this one."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def test_a_fetch_killed_midway_keeps_the_held_commit_and_the_next_poll_fetches(tmp_path):
    (tmp_path / "srv").mkdir()
    upstream = Upstream(tmp_path / "srv" / "dev.git")
    upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=1)}, "first")
    with GitServer(tmp_path / "srv") as server:
        source = GitSource(GitConfig(url=server.url("dev.git"), timeout=30.0), tmp_path / "state")
        held = source.poll().revision
        upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=2)}, "second")
        before = children()
        server.fault, server.fault_skip = Fault.STALL, 1  # ls-refs passes, the fetch stalls
        asked = server.requests

        def kill_the_fetch() -> None:
            wait_for(lambda: server.requests >= asked + 2, timeout=30, what="the stalled fetch")
            for pid in children() - before:
                os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_the_fetch)
        killer.start()
        with pytest.raises(GitTransientError) as raised:
            source.poll()
        killer.join()
        server.release_stalled()
        assert raised.value.code == "GIT_CHILD_FAILED"
        assert "killed by signal SIGKILL" in raised.value.message
        assert source.held_revision() == held
        server.fault = None
        assert source.poll().changed
        assert source.snapshot(upstream.tip()).files["apps/a.yaml"] == (
            DEPLOYMENT.format(n=2).encode()
        )
    assert children() - before == set()  # every child was waited for


# The agent as `margo-lite run` holds it: the state folder's lock, then a step in a child
# that outlives the agent (SIGKILL of the agent alone: the kernel's OOM killer picks one
# process). The child writes its pid, then waits for its parent to go and for a while more.
_AGENT = """
import os, sys, time
from margo_lite import statestore
from margo_lite.git import forked

state, started = sys.argv[1], sys.argv[2]

def step():
    with open(started + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(started + ".tmp", started)
    time.sleep(60)

with statestore.exclusive(state):
    forked.call(step, "fetches")
"""


def test_a_child_that_outlives_a_killed_agent_does_not_keep_the_next_one_out(tmp_path):
    """Seen in the power-cut torture: the agent killed while a fetch ran in its child; the
    restarted agent stopped at once with STATE_BUSY, as the child still held the state lock
    it inherited at the fork."""
    from margo_lite import statestore

    started = tmp_path / "child.pid"
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(tmp_path / "state"), str(started)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    child = 0
    try:
        child = int(wait_for(started.exists, what="the step in the child") and started.read_text())
        agent.kill()
        agent.wait(timeout=30)
        assert Path(f"/proc/{child}").exists()  # the child lives on
        with statestore.exclusive(tmp_path / "state"):  # the next agent starts
            pass
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_a_fetch_killed_while_writing_its_pack_index_does_not_stop_the_next_ones(tmp_path):
    """Seen in the group-kill torture (seed 20261127, kill 8, 0.025 s into a fetch): dulwich
    had moved the pack in and was writing its index as `pack-<sha>.idx.lock` when the kill
    came. Fetching the same objects again makes the same pack name, so every later poll
    failed with FileLocked, and the agent kept the previous commit for good."""
    (tmp_path / "srv").mkdir()
    upstream = Upstream(tmp_path / "srv" / "dev.git")
    first = upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=1)}, "first")
    with GitServer(tmp_path / "srv") as server:
        source = GitSource(GitConfig(url=server.url("dev.git"), timeout=30.0), tmp_path / "state")
        source.poll()
        repo = tmp_path / "state" / "git" / "repo"
        packs = set((repo / "objects" / "pack").glob("pack-*.idx"))
        second = upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=2)}, "second")
        assert source.poll().changed
        # the same store as the kill left it: the second fetch's pack in place, its index
        # not yet renamed from the lock file, the tip not yet recorded
        (index,) = set((repo / "objects" / "pack").glob("pack-*.idx")) - packs
        index.rename(index.with_name(index.name + ".lock"))
        (repo / "refs" / "heads" / "desired").write_text(first + "\n")
        assert source.held_revision() == first
        assert source.poll() == PollResult(second, changed=True)
        assert source.snapshot(second).files["apps/a.yaml"] == DEPLOYMENT.format(n=2).encode()
        assert not list((repo / "objects" / "pack").glob("*.lock"))
