"""The local copy: a bare repository under `state_dir/git/repo`, written only on change.

Packs are written by dulwich and fsynced; the tip (`refs/heads/desired`) and the shallow
list are written atomically after the objects are durable. It is a cache of the remote:
a damaged copy is deleted and the next poll fetches the tip again. Every fetch adds a
pack; past `COMPACT_AFTER_PACKS` packs the tip's objects are written to one new pack, with
deltas between similar files as C git packs them, and the others deleted, so the repository
holds at most the tip's objects plus that many changes, however many commits go by (few
packs: each one's index costs a kilobyte however small the change, and flash wears). An
flock keeps a second process from reading packs that a compaction is deleting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import GitError, GitTransientError
from margo_lite.fileio import fsync_dir, fsync_file, remove_write_leftovers, write_file_atomic
from margo_lite.git.pktline import HEX40

TYPE_CHECKING = False
if TYPE_CHECKING:  # the object store loads when a commit is fetched or read: not to poll
    from dulwich.object_store import BaseObjectStore, PackBasedObjectStore
    from dulwich.objects import Commit, ShaFile, Tree
    from dulwich.repo import Repo

    from margo_lite.git.remote import Remote

log = logs.get(__name__)

MAX_SNAPSHOT_BYTES = 64 << 20  # all files of a snapshot together
MAX_SNAPSHOT_FILES = 10_000
COMPACT_AFTER_PACKS = 3
# Deltas are searched in pure Python: only for a tip this small (bytes, objects); a larger
# one is compacted without them.
DELTA_MAX_BYTES = 8 << 20
DELTA_MAX_OBJECTS = 5000
LOCK_WAIT = 60.0  # seconds another process may hold the local repository
LOCAL_REF = "refs/heads/desired"  # under refs/heads so that git tools see it as a branch


class Store:
    """The bare repository under `state_dir/git/repo`, written only when the tip changes."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._repo = folder / "repo"
        self._tmp = folder / "tmp"

    def tip(self) -> str | None:
        try:
            data = (self._repo / LOCAL_REF).read_bytes().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GitError(
                f"cannot read {self._repo / LOCAL_REF}: {exc.strerror}", code="GIT_STORE_FAILED"
            ) from None
        if not HEX40.match(data):
            log.warning("%s is damaged; the tip will be fetched again", self._repo / LOCAL_REF)
            return None
        return data.decode()

    def shallow(self) -> set[str]:
        try:
            lines = (self._repo / "shallow").read_bytes().split()
        except FileNotFoundError:
            return set()
        return {line.decode() for line in lines if HEX40.match(line)}

    @contextlib.contextmanager
    def open(self) -> Iterator[Repo]:
        """The repository to read, shared with other readers; a fetch waits for them."""
        if not (self._repo / "HEAD").exists():
            raise GitTransientError("no commit has been fetched yet", code="GIT_COMMIT_MISSING")
        with self._lock(fcntl.LOCK_SH), self._open_unlocked() as repo:
            yield repo

    @contextlib.contextmanager
    def _open_unlocked(self) -> Iterator[Repo]:
        from dulwich.repo import Repo

        repo = Repo(str(self._repo))
        try:
            yield repo
        finally:
            try:
                repo.close()
            except BufferError:  # an exception in flight pins a pack map; the GC closes it
                log.debug("pack files of %s left to the garbage collector", self._repo)

    @contextlib.contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        """An flock on `git/lock`, so that a second process (`once` beside `run`) never
        reads packs that a compaction is deleting. Waits at most LOCK_WAIT seconds."""
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._folder / "lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, kind | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GitTransientError(
                            f"{self._folder} is held by another margo-lite process",
                            code="GIT_STORE_BUSY",
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def discard(self, cause: object) -> GitError:
        """Delete a damaged repository, so that the next poll fetches the tip afresh."""
        with self._lock(fcntl.LOCK_EX):
            return self._discard(cause)

    def _discard(self, cause: object) -> GitError:
        import shutil  # as the other steps that write here: in the forked child

        log.warning("the local repository is damaged (%s); it will be fetched again", cause)
        shutil.rmtree(self._repo, ignore_errors=True)
        return GitTransientError(
            f"the local repository {self._repo} was damaged and is fetched again",
            code="GIT_STORE_CORRUPT",
        )

    def _create(self) -> None:
        """Make the bare repository in a temporary folder, then rename it into place."""
        import shutil

        from dulwich.errors import NotGitRepository
        from dulwich.repo import Repo

        if (self._repo / "HEAD").exists():
            try:
                Repo(str(self._repo)).close()
                return
            except (NotGitRepository, OSError, ValueError) as exc:
                self._discard(exc)
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        building = self._folder / "repo.new"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        Repo.init_bare(str(building)).close()
        write_file_atomic(building / "HEAD", f"ref: {LOCAL_REF}\n".encode())
        shutil.rmtree(self._repo, ignore_errors=True)  # a leftover without HEAD
        os.rename(building, self._repo)
        fsync_dir(self._folder)

    def fetch(self, remote: Remote, want: str, held: str | None) -> None:
        """Get `want`'s objects, make them durable, then record it as the tip."""
        with self._lock(fcntl.LOCK_EX):
            self._fetch(remote, want, held)

    def _fetch(self, remote: Remote, want: str, held: str | None) -> None:
        try:
            self._create()
            self._sweep()  # what a fetch killed half-way left would stop this one
            doomed: set[str] = set()
            with self._open_unlocked() as repo:
                store = repo.object_store
                before = _pack_files(self._repo)
                if want.encode() in store:
                    log.info("commit %s is already held", want)
                else:
                    self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
                    remote.fetch_into(store, want, held, self.shallow(), self._tmp)
                commit = _check_complete(store, want)
                _fsync_new(self._repo, before)
                shallow = self.shallow() | ({want} if commit.parents else set())
                if len(_pack_files(self._repo)) > COMPACT_AFTER_PACKS:
                    shallow, doomed = self._compact(store, commit)
            self._set_tip(want, shallow)
            self._clean(doomed)
        except OSError as exc:
            raise GitError(
                f"cannot write the local repository: {exc}", code="GIT_STORE_FAILED"
            ) from exc

    def _compact(self, store: PackBasedObjectStore, commit: Commit) -> tuple[set[str], set[str]]:
        """Write the tip's objects to one new pack; return the new shallow list and the
        packs to delete once the tip is recorded."""
        from dulwich.objects import S_ISGITLINK, Tree
        from dulwich.pack import pack_objects_to_data

        from margo_lite.git.objects import typed

        objects: dict[bytes, tuple[ShaFile, bytes | None]] = {commit.id: (commit, None)}
        pending: list[tuple[bytes, bytes]] = [(commit.tree, b"")]
        while pending:
            sha, path = pending.pop()
            if sha in objects:
                continue
            tree = typed(store, sha, Tree, "a folder entry")
            objects[sha] = (tree, path)
            for entry in tree.iteritems():
                if stat.S_ISDIR(entry.mode):
                    pending.append((entry.sha, entry.path))
                elif not S_ISGITLINK(entry.mode) and entry.sha not in objects:
                    # the file name is the hint that groups versions of one file for deltas
                    objects[entry.sha] = (store[entry.sha], entry.path)
        before = _pack_files(self._repo)
        listed = list(objects.values())
        size = sum(len(obj.as_raw_string()) for obj, _ in listed)
        deltify = size <= DELTA_MAX_BYTES and len(listed) <= DELTA_MAX_OBJECTS
        store.add_pack_data(*pack_objects_to_data(listed, deltify=deltify))
        if not _pack_files(self._repo) - before:
            return self.shallow(), set()  # an existing pack holds exactly these objects
        _fsync_new(self._repo, before)
        log.info("compacted the local repository to %d objects", len(objects))
        return ({commit.id.decode()} if commit.parents else set()), before

    def _set_tip(self, want: str, shallow: set[str]) -> None:
        """Record the shallow list, then the tip: only after the objects are durable."""
        if shallow:
            write_file_atomic(
                self._repo / "shallow", "".join(f"{s}\n" for s in sorted(shallow)).encode()
            )
        else:
            with contextlib.suppress(FileNotFoundError):
                (self._repo / "shallow").unlink()
        ref = self._repo / LOCAL_REF
        ref.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(ref, f"{want}\n".encode())

    def _clean(self, doomed: set[str]) -> None:
        """Delete replaced packs and what an interrupted fetch left behind."""
        pack_dir = self._repo / "objects" / "pack"
        if doomed:
            for name in doomed:
                for suffix in (".pack", ".idx"):
                    with contextlib.suppress(FileNotFoundError):
                        (pack_dir / (name + suffix)).unlink()
            fsync_dir(pack_dir)
        self._sweep()

    def _sweep(self) -> None:
        """Delete what a fetch killed half-way left: dulwich's temporary packs and its
        `.lock` files (a pack index is written as `pack-<sha>.idx.lock`, then renamed; the
        same objects fetched again make the same name, and a lock left there fails every
        later fetch of them with FileLocked), and our own temporary files. Only under the
        exclusive lock: no writer is alive then."""
        import shutil

        pack_dir = self._repo / "objects" / "pack"
        shutil.rmtree(self._tmp, ignore_errors=True)
        for pattern in ("tmp_pack_*", "*.lock"):
            for leftover in pack_dir.glob(pattern):
                leftover.unlink(missing_ok=True)
        for leftover in (self._repo / "objects").glob("incoming-*"):
            leftover.unlink(missing_ok=True)
        for folder in (self._folder, self._repo, (self._repo / LOCAL_REF).parent):  # ours
            remove_write_leftovers(folder)


def corrupt() -> tuple[type[Exception], ...]:
    """What reading a damaged local repository raises (a missing object, a bad zlib stream,
    ...): for an `except` clause, which evaluates it only when something was raised."""
    from dulwich.errors import ChecksumMismatch, ObjectFormatException

    return (KeyError, OSError, ValueError, zlib.error, ChecksumMismatch, ObjectFormatException)


def _pack_files(repo: Path) -> set[str]:
    pack_dir = repo / "objects" / "pack"
    return {p.name[: -len(".pack")] for p in pack_dir.glob("pack-*.pack")}


def _fsync_new(repo: Path, before: set[str]) -> None:
    pack_dir = repo / "objects" / "pack"
    for name in _pack_files(repo) - before:
        for suffix in (".pack", ".idx"):
            fsync_file(pack_dir / (name + suffix))
    fsync_dir(pack_dir)


def _check_complete(store: BaseObjectStore, want: str) -> Commit:
    """The commit and every tree and blob of it are held, each of the type that names it:
    never record a partial tip, nor one that a walk would trip over."""
    from dulwich.objects import S_ISGITLINK, Commit, Tree

    from margo_lite.git.objects import typed

    try:
        commit = typed(store, want.encode(), Commit, "the branch")
        pending = [commit.tree]
        while pending:
            tree = typed(store, pending.pop(), Tree, "a commit or folder entry")
            for entry in tree.iteritems():
                if stat.S_ISDIR(entry.mode):
                    pending.append(entry.sha)
                elif not S_ISGITLINK(entry.mode) and entry.sha not in store:
                    raise KeyError(entry.sha)
    except KeyError as exc:
        raise GitTransientError(
            f"the fetched commit {want} is incomplete (missing {exc.args[0]!r})",
            code="GIT_PACK_INVALID",
        ) from None
    return commit


def read_files(store: BaseObjectStore, tree_id: bytes, path: tuple[bytes, ...]) -> dict[str, bytes]:
    """Every regular file below `path` in the tree, keyed by its posix path relative to it.

    A missing folder gives no files: Git cannot hold an empty folder, so a WOS that removed
    the last deployment removed the folder too.
    """
    from dulwich.objects import Blob, Tree

    from margo_lite.git.objects import typed

    tree = typed(store, tree_id, Tree, "the commit's tree")
    for name in path:
        entry = next((e for e in tree.iteritems() if e.path == name), None)
        if entry is None:
            return {}
        if not stat.S_ISDIR(entry.mode):
            raise GitError(
                f"git.path {b'/'.join(path).decode(errors='replace')!r} is not a folder",
                code="GIT_PATH_INVALID",
            )
        tree = typed(store, entry.sha, Tree, f"folder {name.decode(errors='replace')!r}")
    files: dict[str, bytes] = {}
    total = 0
    pending: list[tuple[str, Tree]] = [("", tree)]
    while pending:
        prefix, tree = pending.pop()
        for entry in tree.iteritems():
            name = prefix + entry.path.decode("utf-8", "surrogateescape")
            if stat.S_ISDIR(entry.mode):
                pending.append((name + "/", typed(store, entry.sha, Tree, f"folder {name!r}")))
            elif stat.S_ISREG(entry.mode):
                data = typed(store, entry.sha, Blob, f"file {name!r}").as_raw_string()
                total += len(data)
                if total > MAX_SNAPSHOT_BYTES or len(files) >= MAX_SNAPSHOT_FILES:
                    raise GitError(
                        f"the desired-state files are larger than {MAX_SNAPSHOT_BYTES >> 20} MiB "
                        f"or more than {MAX_SNAPSHOT_FILES} files",
                        code="GIT_TOO_LARGE",
                    )
                files[name] = data
    return files
