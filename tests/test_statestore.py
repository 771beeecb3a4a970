"""The state store survives a crash at every step of a write.

A crash is simulated by raising from the store's fault hook at each step; a power cut also
loses whatever was not fsynced, which is simulated by truncating files written but not yet
synced at that instant. Afterwards a fresh store (a new process) must read either the old or
the new content: never a mix, never "nothing".
"""

from __future__ import annotations

import os
import stat

import pytest

from margo_lite import fileio, statestore
from margo_lite.errors import StateCorruptError, StateError
from margo_lite.statestore import StateStore

OLD = {"deployments": ["a", "b"], "commit": "1" * 40}
NEW = {"deployments": ["a", "b", "c"], "commit": "2" * 40}


class Crash(BaseException):
    """Like a power cut, it skips the store's clean-up handlers (they catch Exception)."""


def crash_at(step_name):
    def fault(step):
        if step == step_name:
            raise Crash(step)

    return fault


def tmp_files(root):
    return [
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if fileio.TMP_MARK in f
    ]


@pytest.mark.parametrize("step", fileio.WRITE_STEPS)
@pytest.mark.parametrize("lose_unsynced", [False, True])
def test_crash_at_every_step_leaves_old_or_new(tmp_path, step, lose_unsynced):
    StateStore(tmp_path).write_json("agent.json", OLD)
    store = StateStore(tmp_path, fault=crash_at(step))
    with pytest.raises(Crash):
        store.write_json("agent.json", NEW)
    if lose_unsynced:
        for leftover in tmp_files(tmp_path):  # un-synced data never reached the disk
            if step == "tmp-written":
                os.truncate(leftover, 7)
    after = StateStore(tmp_path)
    value = after.read_json("agent.json")
    expected = NEW if fileio.WRITE_STEPS.index(step) >= fileio.WRITE_STEPS.index("renamed") else OLD
    assert value == expected
    after.remove_leftovers()
    assert tmp_files(tmp_path) == []
    # the store keeps working after recovery
    after.write_json("agent.json", NEW)
    assert StateStore(tmp_path).read_json("agent.json") == NEW


def test_crash_on_first_write_reads_as_never_written(tmp_path):
    store = StateStore(tmp_path, fault=crash_at("tmp-synced"))
    with pytest.raises(Crash):
        store.write_json("deployments/x.json", NEW)
    assert StateStore(tmp_path).read_json("deployments/x.json") is None


def test_truncated_temp_file_is_ignored_and_cleaned(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("agent.json", OLD)
    leftover = tmp_path / f".agent.json{fileio.TMP_MARK}99999"
    leftover.write_bytes(statestore.encode(b'{"half": ')[:20])
    assert store.read_json("agent.json") == OLD
    assert store.remove_leftovers() == 1
    assert not leftover.exists()


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "zero-length", "garbage-header"])
def test_corrupted_target_falls_back_to_previous_copy(tmp_path, damage):
    store = StateStore(tmp_path)
    store.write_json("agent.json", OLD)
    store.write_json("agent.json", NEW)
    target = tmp_path / "agent.json"
    data = bytearray(target.read_bytes())
    if damage == "flip-byte":
        data[-5] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "zero-length":
        data = bytearray()
    else:
        data[:5] = b"XXXXX"
    target.write_bytes(bytes(data))
    assert StateStore(tmp_path).read_json("agent.json") == OLD


def test_both_copies_corrupt_is_an_error_never_empty(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("agent.json", OLD)
    store.write_json("agent.json", NEW)
    for name in ("agent.json", "agent.json.prev"):
        (tmp_path / name).write_bytes(b"\x00" * 10)
    with pytest.raises(StateCorruptError) as err:
        store.read_json("agent.json")
    assert err.value.code == "STATE_CORRUPT"


def test_single_corrupt_copy_without_previous_is_an_error(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("agent.json", OLD)
    (tmp_path / "agent.json").write_bytes(b"#margo-lite-state v1 sha256=00 size=2\n{}")
    with pytest.raises(StateCorruptError):
        store.read_json("agent.json")


def test_secret_records_are_private(tmp_path):
    store = StateStore(tmp_path)
    store.write_bytes("secrets/token", b"s3cr3t-value", secret=True)
    store.write_bytes("secrets/token", b"s3cr3t-rotated", secret=True)
    for name in ("token", "token.prev"):
        mode = stat.S_IMODE(os.stat(tmp_path / "secrets" / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert store.read_bytes("secrets/token") == b"s3cr3t-rotated"


def test_names_and_delete(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("deployments/b.json", {})
    store.write_json("deployments/a.json", {})
    store.write_json("deployments/a.json", {"again": True})
    assert store.names("deployments") == ["deployments/a.json", "deployments/b.json"]
    store.delete("deployments/a.json")
    assert store.names("deployments") == ["deployments/b.json"]
    assert store.read_json("deployments/a.json") is None


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../b", ".hidden", "x.prev", ""])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(StateError):
        StateStore(tmp_path).path(name)


def test_write_file_atomic_replaces_plain_file(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    with pytest.raises(Crash):
        fileio.write_file_atomic(target, b"new: 2\n", fault=crash_at("tmp-synced"))
    assert target.read_text() == "old: 1\n"
    fileio.write_file_atomic(target, b"new: 2\n", mode=0o600)
    assert target.read_text() == "new: 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_leftover_sweep_touches_only_what_its_writes_leave(tmp_path):
    """Other concerns keep their own trees under the state dir: a package file shaped
    like a temporary name is theirs, and survives the sweep at start."""
    store = StateStore(tmp_path)
    store.write_json("deployments/a.json", OLD)
    mine = [
        tmp_path / f".agent.json{fileio.TMP_MARK}4242",
        tmp_path / "deployments" / f".a.json{fileio.TMP_MARK}4242",
        tmp_path / "deployments" / f".a.json.prev{fileio.TMP_MARK}4242",
    ]
    package = tmp_path / "packages" / "pkgs" / ("ab" * 32)
    package.mkdir(parents=True)
    theirs = [
        package / f".compose.yaml{fileio.TMP_MARK}4242",  # a file in a package
        package / f".data{fileio.TMP_MARK}1",
        tmp_path / "deployments" / f".a.json{fileio.TMP_MARK}not-a-pid",
        tmp_path / f"agent.json{fileio.TMP_MARK}4242",  # not hidden: not ours
    ]
    for path in mine + theirs:
        path.write_bytes(b"x")
    assert store.remove_leftovers() == len(mine)
    assert [p for p in mine if p.exists()] == []
    assert [p for p in theirs if not p.exists()] == []
    assert store.read_json("deployments/a.json") == OLD


def test_record_names_are_at_most_folder_and_name(tmp_path):
    with pytest.raises(StateError):
        StateStore(tmp_path).write_json("a/b/c.json", OLD)
