"""Durable records under `device.state_dir` that survive a power cut at any instant.

A record is one file: a header line with the payload's length and SHA-256, then the
payload. A write goes to a temporary file in the same folder, is fsynced, the current
file is kept as `<name>.prev` (a hard link, so no data is copied), the temporary file is
renamed over the record and the folder is fsynced. A reader checks length and digest; a
torn or rotten record falls back to `.prev`. When neither reads, `StateCorruptError` is
raised: an unreadable record must never look like an empty one, because "no deployments
recorded" would make the agent remove running applications.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import StateCorruptError, StateIOError
from margo_lite.fileio import (
    DIR_MODE,
    FILE_MODE,
    PREV_SUFFIX,
    SECRET_MODE,
    fsync_dir,
    remove_write_leftovers,
    unlink_quietly,
    write_file_atomic,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

MAGIC = b"#margo-lite-state v1"
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
MAX_NAME_PARTS = 2  # "record" or "folder/record": where leftovers are looked for


def encode(payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return b"%s sha256=%s size=%d\n" % (MAGIC, digest.encode(), len(payload)) + payload


def decode(data: bytes) -> bytes:
    """The payload of an encoded record; ValueError when it is torn or corrupt."""
    header, sep, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if not sep or len(fields) != 4 or b" ".join(fields[:2]) != MAGIC:
        raise ValueError("bad header")
    digest, size = fields[2], fields[3]
    if not digest.startswith(b"sha256=") or not size.startswith(b"size="):
        raise ValueError("bad header")
    if not size[5:].isdigit() or int(size[5:]) != len(payload):
        raise ValueError("length mismatch (torn write)")
    if hashlib.sha256(payload).hexdigest().encode() != digest[7:]:
        raise ValueError("checksum mismatch")
    return payload


_HELD: set[int] = set()  # the descriptors of the locks `exclusive` holds in this process


def _let_go_in_child() -> None:
    """A forked child (git/forked.py) closes its copies of the locks: the lock stays the
    parent's, and a child that outlives its parent (SIGKILL of the agent alone) does not keep
    the restarted agent out. Closing a copy never unlocks: `flock` belongs to the open file."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike[str], name: str = ".lock") -> Iterator[None]:
    """Hold `folder/name` locked for this process: one agent (run or once) per state dir.

    A second one would interleave outbox numbers, records and leftover sweeps."""
    folder = Path(folder)
    try:
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise StateIOError(f"cannot open the lock in {folder}: {exc.strerror or exc}") from exc
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateIOError(
                f"another margo-lite (run or once) is using {folder}", code="STATE_BUSY"
            ) from None
        yield
    finally:
        if fd in _HELD:  # else a forked child that let go of it already
            _HELD.discard(fd)
            os.close(fd)  # closing releases the lock


class StateStore:
    """Named records under one folder. Names are relative paths like "deployments/abc.json".

    `fault` is called with each step name of `fileio.WRITE_STEPS` as a write passes it; the
    crash tests raise from it to stop a write at that point.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, fault: Callable[[str], None] | None = None
    ) -> None:
        self.root = Path(root)
        self._fault = fault

    def path(self, name: str) -> Path:
        parts = name.split("/")
        if (
            len(parts) > MAX_NAME_PARTS
            or not all(_NAME_PART.match(part) for part in parts)
            or name.endswith(PREV_SUFFIX)
        ):
            raise StateIOError(f"invalid record name {name!r}")
        return self.root.joinpath(*parts)

    # --- bytes -----------------------------------------------------------------------------

    def write_bytes(self, name: str, payload: bytes, *, secret: bool = False) -> None:
        path = self.path(name)
        try:
            self._makedirs(path.parent)
            write_file_atomic(
                path,
                encode(payload),
                mode=SECRET_MODE if secret else FILE_MODE,
                keep_prev=True,
                fault=self._fault,
            )
        except OSError as exc:
            raise StateIOError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def read_bytes(self, name: str) -> bytes | None:
        """The payload; None only when the record was never written (or was deleted)."""
        path = self.path(name)
        prev = path.with_name(path.name + PREV_SUFFIX)
        problems = []
        for candidate in (path, prev):
            try:
                data = candidate.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{candidate}: {exc.strerror or exc}")
                continue
            try:
                payload = decode(data)
            except ValueError as exc:
                problems.append(f"{candidate}: {exc}")
                continue
            if problems:
                log.warning(
                    "state record %s was unreadable (%s); using its previous copy",
                    path,
                    "; ".join(problems),
                )
            return payload
        if problems:
            raise StateCorruptError(f"state record unreadable: {'; '.join(problems)}")
        return None

    # --- JSON ------------------------------------------------------------------------------

    def write_json(self, name: str, value: Any, *, secret: bool = False) -> None:
        payload = json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False).encode()
        self.write_bytes(name, payload + b"\n", secret=secret)

    def read_json(self, name: str) -> Any:
        payload = self.read_bytes(name)
        if payload is None:
            return None
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise StateCorruptError(f"state record {self.path(name)} is not JSON: {exc}") from None

    # --- housekeeping ----------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove a record and its previous copy; the copy first, so nothing old returns."""
        path = self.path(name)
        try:
            unlink_quietly(path.with_name(path.name + PREV_SUFFIX))
            unlink_quietly(path)
            if path.parent.exists():
                fsync_dir(path.parent)
        except OSError as exc:
            raise StateIOError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def names(self, folder: str = "") -> list[str]:
        """Record names directly in `folder`, sorted."""
        base = self.path(folder) if folder else self.root
        try:
            entries = sorted(os.listdir(base))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateIOError(f"cannot list {base}: {exc.strerror or exc}") from exc
        found = set()
        for entry in entries:
            if entry.startswith(".") or not (base / entry).is_file():
                continue
            record = entry.removesuffix(PREV_SUFFIX)
            found.add(f"{folder}/{record}" if folder else record)
        return sorted(found)

    def remove_leftovers(self) -> int:
        """Delete the temporary files a crash left in this store; returns how many.

        Only where a write could have left one: the root and the record folders directly
        below it. Other concerns keep their own trees under the state dir (packages, the
        Git copy): their files are theirs, whatever their names."""
        count = remove_write_leftovers(self.root)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if _NAME_PART.match(entry.name) and entry.is_dir(follow_symlinks=False):
                    count += remove_write_leftovers(Path(entry.path))
        return count

    def _makedirs(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            os.mkdir(new, DIR_MODE)
            fsync_dir(new.parent)
