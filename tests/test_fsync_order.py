"""Durability that a test can catch: the system calls of real state writes, read by strace,
must fsync a file's data before its rename and its folder after (tests/support/fsyncorder.py).

A crash test that SIGKILLs a process cannot see a missing fsync (the page cache survives);
the order of the calls can. Removing either fsync from `margo_lite/fileio.py` fails both
the store test and the agent run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.support import fsyncorder
from tests.support.engines import free_port
from tests.support.rig import ROOT, app_files, deployment

STRACE = shutil.which("strace")
# Not a skip: without strace this proof would silently vanish (tools/setup-host installs it).
NO_STRACE = "strace is not installed (tools/setup-host installs it)"


def run_traced(argv: list[str], trace, env=None) -> list[fsyncorder.Call]:
    assert STRACE, NO_STRACE
    subprocess.run(
        fsyncorder.traced(argv, str(trace)),
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return fsyncorder.parse(trace.read_text(errors="replace"))


def test_the_check_fails_a_rename_without_fsyncs():
    trace = textwrap.dedent(
        """\
        10 openat(AT_FDCWD</s>, "/s/.a.tmp.1", O_WRONLY|O_CREAT) = 3</s/.a.tmp.1>
        10 write(3</s/.a.tmp.1>, "x", 1) = 1
        10 rename("/s/.a.tmp.1", "/s/a") = 0
        10 write(4</s/b>, "y", 1) = 1
        10 write(5<socket:[77]>, "POST", 4) = 4
        """
    )
    found = fsyncorder.check(fsyncorder.parse(trace), ["/s"])
    assert found.renames == 1
    assert any("/s/a: renamed into place (call 2) before the data" in v for v in found.violations)
    assert any("/s/a: renamed into place" in v and "socket" in v for v in found.violations)
    assert any("/s/b: written in place" in v for v in found.violations)


def test_the_check_passes_the_right_order_across_threads():
    trace = textwrap.dedent(
        """\
        10 write(3</s/d/.a.tmp.1>, "x", 1) = 1
        11 write(5<socket:[77]>, "GET", 3) = 3
        10 fsync(3</s/d/.a.tmp.1> <unfinished ...>
        11 clone3({flags=CLONE_VM}, 88) = 12
        10 <... fsync resumed>) = 0
        10 link("/s/d/a", "/s/d/.a.prev.tmp.1") = 0
        10 rename("/s/d/.a.prev.tmp.1", "/s/d/a.prev") = 0
        10 renameat(AT_FDCWD</x>, "/s/d/.a.tmp.1", AT_FDCWD</x>, "/s/d/a") = 0
        10 fsync(4</s/d>) = 0
        10 exit_group(0) = ?
        """
    )
    found = fsyncorder.check(fsyncorder.parse(trace), ["/s"])
    assert (found.renames, found.violations) == (2, [])


def test_state_store_writes_are_durable(tmp_path):
    state = tmp_path / "state"
    script = textwrap.dedent(
        f"""\
        from pathlib import Path
        from margo_lite.fileio import write_file_atomic
        from margo_lite.statestore import StateStore
        store = StateStore(Path({str(state)!r}))
        for i in range(3):
            store.write_json("agent", {{"n": i}})
            store.write_json("deployments/web-1", {{"state": "Installed", "n": i}})
        store.write_json("token", {{"token": "s3cret"}}, secret=True)
        store.delete("deployments/web-1")
        write_file_atomic(Path({str(state)!r}) / "config.yaml", b"device: {{}}\\n")
        """
    )
    calls = run_traced(
        [sys.executable, "-c", script], tmp_path / "trace", env={"PYTHONPATH": str(ROOT)}
    )
    found = fsyncorder.check(calls, [str(state)])
    assert found.violations == []
    assert found.renames >= 8  # every write was seen: 7 records (+ .prev copies) and the file


@pytest.mark.engine
def test_agent_install_update_removal_and_reports_are_durable(rig, tmp_path):
    """`margo-lite once` under strace through an install, a parameter update and a removal,
    each with its reports delivered to the WOS."""
    assert STRACE, NO_STRACE
    port = free_port()
    argv = [sys.executable, "-m", "margo_lite", "-c", str(rig.config), "once"]
    steps = [
        app_files(port, "first"),
        {"web-1.yaml": deployment("web-1", greeting="second", port=port)},
        {"web-1.yaml": None},
    ]
    renamed: list[str] = []
    for step, files in enumerate(steps):
        rig.upstream.commit(files)
        calls = run_traced(argv, tmp_path / f"trace{step}", env=rig.env())
        found = fsyncorder.check(calls, [str(rig.tmp / "state")])
        assert found.violations == [], f"step {step}:\n" + "\n".join(found.violations)
        renamed += [c.paths()[1] for c in calls if c.ok and c.name.startswith("rename")]
    assert rig.states("web-1") == [
        *("Pending", "Installing", "Installed"),
        *("Installing", "Installed"),
        *("Removing", "Removed"),
    ]
    # the run wrote what the check is about: records, queued reports, the Git tip
    for part in ("/deployments/web-1", "/outbox/", "/git/repo/refs/"):
        assert any(part in path for path in renamed), (part, renamed)
