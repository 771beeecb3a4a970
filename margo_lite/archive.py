"""Safe extraction of package tarballs, and the content digest of an extracted tree.

A package comes from a server or a repository margo-lite does not control, so every
member is checked before anything is written, and the files are written here, member by
member, never by `tarfile.extract*`: Python 3.11.2 (Debian 12) has no extraction filters,
and even with them the rules below are ours to state. Refused: absolute paths, `..`,
links leaving the package, writing through a link, device files and FIFOs, duplicates,
and decompression bombs (limits on the decompressed stream, the total size and the
number of entries). Nothing is written outside `dest`.

The digest is computed over the tree on disk (paths, kinds, executable bits, contents,
link targets), so the same package gives the same digest whether it arrived as a
tarball, a bare compose file or a folder in the repository.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import stat
import zlib
from pathlib import Path

from margo_lite.errors import PackageError
from margo_lite.fileio import create_file, write_all
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:  # tarfile and the decompressors load when an archive is extracted
    import tarfile
    from typing import BinaryIO

CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_HEADER_ALLOWANCE = 1536  # bytes of tar headers and padding allowed per entry
#: Errors creating an entry that come from its name, not from the disk (which is ours).
_BAD_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.ELOOP, errno.ENOTDIR}


@dataclass(frozen=True)
class Limits:
    """Bounds of one extracted package."""

    max_bytes: int = 512 << 20  # total size of the extracted files
    max_entries: int = 10_000  # files, folders and links

    @property
    def max_stream(self) -> int:
        """Most decompressed bytes the tar reader may see (contents plus headers)."""
        return self.max_bytes + self.max_entries * _HEADER_ALLOWANCE + (1 << 20)


def is_archive(head: bytes) -> bool:
    """Whether the first bytes (at least 262) look like a tarball, compressed or not."""
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC)):
        return True
    return head[257:262] == b"ustar"


def unsafe(message: str) -> PackageError:
    return PackageError(message, code="UNSAFE_ARCHIVE")


def too_large(message: str) -> PackageError:
    return PackageError(message, code="PACKAGE_TOO_LARGE")


class _LimitedReader(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes came through it."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        want = min(len(buffer), self._left + 1)
        data = self._inner.read(want)
        if len(data) > self._left:
            raise too_large("the archive decompresses to more than the package size limit")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _decompressed(raw: BinaryIO) -> BinaryIO:
    import bz2
    import gzip
    import lzma

    head = raw.read(6)
    raw.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    return raw


def member_path(name: str) -> str:
    """The member's path relative to the package root, or UNSAFE_ARCHIVE."""
    if "\x00" in name or "\\" in name:
        raise unsafe(f"member {name!r}: forbidden character in path")
    if name.startswith("/"):
        raise unsafe(f"member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise unsafe(f"member {name!r}: '..' in path")
    return "/".join(parts)


def _link_stays_inside(path: str, target: str) -> bool:
    """Whether a symlink at `path` with `target` stays inside the root, read lexically."""
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = path.count("/")  # folders above the link, below the root
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def extract(raw: BinaryIO, dest: Path, limits: Limits = Limits()) -> None:
    """Extract the tarball `raw` (plain, gzip, bzip2 or xz) into the empty folder `dest`.

    Raises PackageError with UNSAFE_ARCHIVE, PACKAGE_TOO_LARGE or PACKAGE_INVALID. On
    error `dest` may hold part of the package: the caller throws the folder away.
    """
    import lzma
    import tarfile

    stream = io.BufferedReader(_LimitedReader(_decompressed(raw), limits.max_stream), CHUNK)
    writer = _TreeWriter(dest, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                try:
                    writer.add(member, tar)
                except OSError as exc:
                    if exc.errno not in _BAD_NAME_ERRNOS:
                        raise
                    raise PackageError(
                        f"member {member.name!r}: {exc.strerror}", code="PACKAGE_INVALID"
                    ) from None
    except PackageError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a local I/O problem (disk full), not a bad archive
        raise PackageError(f"not a valid tar archive: {exc}", code="PACKAGE_INVALID") from None
    writer.finish()


class _TreeWriter:
    """Writes checked members below `root`, never following a link on the way."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.kinds: dict[str, str] = {"": "d"}  # relative path -> "d", "f" or "l"
        self.total = 0
        self.links: list[str] = []

    def _check_parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind == "l":
                raise unsafe(f"member {path!r}: would be written through the link {parent!r}")
            if kind == "f":
                raise unsafe(f"member {path!r}: {parent!r} is a file")
            if kind is None:
                self._mkdir(parent)

    def _mkdir(self, path: str) -> None:
        self._count()
        os.mkdir(self.root / path, 0o755)
        self.kinds[path] = "d"

    def _count(self) -> None:
        if len(self.kinds) >= self.limits.max_entries:
            raise too_large(f"the archive holds more than {self.limits.max_entries} entries")

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        path = member_path(member.name)
        if member.isdir():
            if not path:
                return
            self._check_parents(path)
            kind = self.kinds.get(path)
            if kind == "d":
                return
            if kind is not None:
                raise unsafe(f"member {member.name!r}: appears twice")
            self._mkdir(path)
            return
        if not path:
            raise unsafe(f"member {member.name!r}: not a folder but names the package root")
        if member.ischr() or member.isblk():
            raise unsafe(f"member {member.name!r}: device file not allowed")
        if member.isfifo():
            raise unsafe(f"member {member.name!r}: FIFO not allowed")
        if member.issparse() or not (member.isreg() or member.issym() or member.islnk()):
            raise unsafe(f"member {member.name!r}: special file not allowed")
        self._check_parents(path)
        if path in self.kinds:
            raise unsafe(f"member {member.name!r}: appears twice")
        self._count()
        target = self.root / path
        if member.issym():
            if not _link_stays_inside(path, member.linkname):
                raise unsafe(
                    f"member {member.name!r}: symbolic link to {member.linkname!r} "
                    "leaves the package"
                )
            os.symlink(member.linkname, target)
            self.kinds[path] = "l"
            self.links.append(path)
        elif member.islnk():
            try:
                source = member_path(member.linkname)
            except PackageError as exc:
                raise unsafe(f"member {member.name!r}: hard link: {exc.message}") from None
            if self.kinds.get(source) != "f":
                raise unsafe(
                    f"member {member.name!r}: hard link to {member.linkname!r}, which is not "
                    "a file of the package"
                )
            os.link(self.root / source, target, follow_symlinks=False)
            self.kinds[path] = "f"
        else:
            self._write_file(member, tar, target)
            self.kinds[path] = "f"

    def _write_file(self, member: tarfile.TarInfo, tar: tarfile.TarFile, target: Path) -> None:
        if self.total + member.size > self.limits.max_bytes:
            raise too_large(f"the package unpacks to more than {self.limits.max_bytes} bytes")
        mode = 0o755 if member.mode & 0o111 else 0o644
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has a reader
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, mode)
        try:
            left = member.size
            while left:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    raise PackageError(
                        f"member {member.name!r} is truncated", code="PACKAGE_INVALID"
                    )
                write_all(fd, chunk)
                left -= len(chunk)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.total += member.size

    def finish(self) -> None:
        """Resolve every link on disk: chains of links must not leave the package either."""
        check_links(self.root)


def check_links(root: Path) -> None:
    """UNSAFE_ARCHIVE when a symbolic link below `root` resolves outside it."""
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                if resolved != top and not resolved.startswith(top + os.sep):
                    rel = os.path.relpath(path, root)
                    raise unsafe(f"symbolic link {rel!r} resolves outside the package")


def write_tree(files: dict[str, bytes], dest: Path, limits: Limits = Limits()) -> None:
    """Write a package given as {relative posix path: content} into the empty folder `dest`."""
    total = sum(len(data) for data in files.values())
    if total > limits.max_bytes:
        raise too_large(f"the package holds more than {limits.max_bytes} bytes")
    if len(files) > limits.max_entries:
        raise too_large(f"the package holds more than {limits.max_entries} files")
    normalized: dict[str, bytes] = {}
    for name, data in files.items():
        path = member_path(name)
        if not path or path in normalized:
            raise PackageError(f"file {name!r}: empty or repeated path", code="PACKAGE_INVALID")
        normalized[path] = data
    made: set[str] = set()
    for path in sorted(normalized):
        parts = path.split("/")
        try:
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in normalized:
                    raise PackageError(f"{parent!r} is a file and a folder", code="PACKAGE_INVALID")
                if parent not in made:
                    os.mkdir(dest / parent, 0o755)
                    made.add(parent)
            create_file(dest / path, normalized[path])
        except OSError as exc:
            if exc.errno not in _BAD_NAME_ERRNOS:
                raise
            raise PackageError(f"file {path!r}: {exc.strerror}", code="PACKAGE_INVALID") from None


def tree_digest(root: Path) -> str:
    """`sha256:<hex>` over the tree: each entry's path, kind, executable bit and content."""
    outer = hashlib.sha256(b"margo-lite tree v1\n")
    entries: list[tuple[bytes, bytes]] = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                line = b"l " + os.readlink(path).encode("utf-8", "surrogateescape")
            elif stat.S_ISDIR(info.st_mode):
                line = b"d"
            elif stat.S_ISREG(info.st_mode):
                mode = b"x" if info.st_mode & 0o111 else b"-"
                line = b"f %s %d %s" % (mode, info.st_size, _file_sha256(path).encode())
            else:  # never created by this module
                raise unsafe(f"{rel!r}: special file in package")
            entries.append((rel, line))
    for rel, line in sorted(entries):
        outer.update(b"%d:%s %s\n" % (len(rel), rel, line))
    return "sha256:" + outer.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_size(root: Path) -> int:
    """Bytes of the files below `root` (links and folders count as zero)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def normalize_relative(name: str) -> str:
    """A relative posix path without `.` parts; ValueError when absolute or escaping."""
    if name.startswith("/") or "\x00" in name:
        raise ValueError("must be a relative path")
    norm = posixpath.normpath(name)
    if norm == "..":
        raise ValueError("leaves the folder")
    if norm.startswith("../"):
        raise ValueError("leaves the folder")
    return "" if norm == "." else norm
