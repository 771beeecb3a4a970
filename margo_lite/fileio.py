"""Writing files so that a power cut at any instant leaves the old or the new content.

The one place for durable file writes: `write_file_atomic` (a temporary file in the same
folder, fsynced, renamed over the target, the folder fsynced; optionally keeping the old
content as `<name>.prev` through a hard link), `create_file` (a new file, never through a
link or over one), `fsync_dir` / `sync_tree` for folders, and `remove_write_leftovers` for
what an interrupted write left behind. `statestore` adds checksummed records on top; the
Git copy, onboarding, compose files and the package cache use these directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

SECRET_MODE = 0o600
FILE_MODE = 0o644
DIR_MODE = 0o700
PREV_SUFFIX = ".prev"
TMP_MARK = ".tmp."
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
# What `write_file_atomic` leaves when a crash stops it: `.<name>[.prev].tmp.<pid>`.
_LEFTOVER = re.compile(r"^\.([A-Za-z0-9_][A-Za-z0-9._-]{0,199})" + re.escape(TMP_MARK) + r"\d+$")

#: The steps of a write, in order; a fault hook sees each name as the step completes.
WRITE_STEPS = ("tmp-written", "tmp-synced", "prev-kept", "renamed", "dir-synced")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in a folder durable (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make a file written by someone else (dulwich, a tool) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every folder below and including `root` (files were synced when written)."""
    for folder, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(folder)


def write_file_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = FILE_MODE,
    keep_prev: bool = False,
    fault: Callable[[str], None] | None = None,
) -> None:
    """Replace `path` by `data` atomically and durably.

    `keep_prev` first makes `<path>.prev` the current content (a hard link, so no window
    where it is torn). `fault` is called with each name of `WRITE_STEPS` as the write
    passes it; the crash tests raise from it.
    """
    step = fault or (lambda name: None)
    folder = path.parent
    tmp = folder / f".{path.name}{TMP_MARK}{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        step("tmp-written")
        os.fsync(fd)
        step("tmp-synced")
    except Exception:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    if keep_prev:
        _keep_prev(path)
        step("prev-kept")
    os.replace(tmp, path)
    step("renamed")
    fsync_dir(folder)
    step("dir-synced")


def _keep_prev(path: Path) -> None:
    """Make `<path>.prev` the current content of `path`, without a window where it is torn."""
    prev = path.with_name(path.name + PREV_SUFFIX)
    link_tmp = path.with_name(f".{prev.name}{TMP_MARK}{os.getpid()}")
    unlink_quietly(link_tmp)
    try:
        os.link(path, link_tmp)
    except FileNotFoundError:
        return
    except OSError as exc:  # a filesystem without hard links: copy instead
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        import shutil  # late: shutil loads bz2 and lzma, and this is a rare path

        shutil.copy2(path, link_tmp)
        fsync_file(link_tmp)
    os.replace(link_tmp, prev)


def create_file(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `target` (never through a link, never over a file) and make it durable."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, mode)
    try:
        write_all(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_write_leftovers(folder: Path) -> int:
    """Delete what an interrupted `write_file_atomic` left directly in `folder`
    (`.<name>[.prev].tmp.<pid>`); returns how many."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    count = 0
    for entry in entries:
        found = _LEFTOVER.match(entry.name)
        if found and _NAME_PART.match(found.group(1)) and entry.is_file(follow_symlinks=False):
            unlink_quietly(Path(entry.path))
            count += 1
    return count
