"""A repository on a local filesystem as the remote (tests, demo, USB sticks), read with
dulwich: no protocol, the objects of the wanted commit are copied."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.object_store import PackBasedObjectStore
from dulwich.objects import S_ISGITLINK, Commit, ShaFile, Tree
from dulwich.repo import Repo

from margo_lite.errors import GitError, GitTransientError
from margo_lite.git.objects import typed
from margo_lite.git.smarthttp import MAX_PACK_BYTES


class LocalRemote:
    """A repository on a local filesystem (tests, demo, USB sticks): read with dulwich."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def authorize(self, header: str | None) -> None:
        pass  # no requests

    def close(self) -> None:
        pass

    def fetch_into(
        self,
        store: PackBasedObjectStore,
        want: str,
        held: str | None,
        shallow: set[str],
        spool: Path,
    ) -> None:
        """`Remote.fetch_into`: the missing objects are copied, no pack is sent."""
        objects = self.objects(want, lambda sha: sha in store)
        store.add_objects([(obj, None) for obj in objects])

    @contextlib.contextmanager
    def _open(self) -> Iterator[Repo]:
        try:
            repo = Repo(str(self._path))
        except (NotGitRepository, FileNotFoundError, NotADirectoryError):
            raise GitError(f"{self._path}: repository not found", code="GIT_NOT_FOUND") from None
        try:
            yield repo
        finally:
            repo.close()

    def tip(self, branch: str) -> str | None:
        with self._open() as repo:
            try:
                return repo.refs[f"refs/heads/{branch}".encode()].decode()
            except KeyError:
                return None

    def objects(self, want: str, held: Callable[[bytes], bool]) -> list[ShaFile]:
        """The objects of commit `want` (without its parents) that `held` says are missing."""
        with self._open() as repo:
            store = repo.object_store
            try:
                commit = typed(store, want.encode(), Commit, "the branch")
                found: dict[bytes, ShaFile] = {commit.id: commit}
                pending = [commit.tree]
                total = 0
                while pending:
                    sha = pending.pop()
                    if sha in found or held(sha):
                        continue  # a held tree is held with everything below it
                    tree = found[sha] = typed(store, sha, Tree, "a commit or folder entry")
                    for entry in tree.iteritems():
                        if stat.S_ISDIR(entry.mode):
                            pending.append(entry.sha)
                        elif not S_ISGITLINK(entry.mode) and entry.sha not in found:
                            if held(entry.sha):
                                continue
                            found[entry.sha] = blob = store[entry.sha]
                            total += len(blob.as_raw_string())
                            if total > MAX_PACK_BYTES:
                                raise GitError(
                                    f"{self._path}: commit {want} holds more than "
                                    f"{MAX_PACK_BYTES >> 20} MiB",
                                    code="GIT_TOO_LARGE",
                                )
            except KeyError as exc:
                raise GitTransientError(
                    f"{self._path} is incomplete (missing object {exc.args[0]!r})",
                    code="GIT_PACK_INVALID",
                ) from None
            return list(found.values())
