"""Git objects of the wrong type, crafted with C git on the server's repository: a branch
naming a tag, a tree or a blob; a tree entry of one type naming an object of another; a
commit whose tree is a blob. Each is GIT_OBJECT_INVALID (or, where C git's own server
refuses to send it, that server's error), never a traceback, over C git's http-backend and
from a local path; the last good desired state stays held."""

from __future__ import annotations

import binascii
import itertools
from pathlib import Path

import pytest

from margo_lite.config import GitConfig
from margo_lite.errors import SourceError
from margo_lite.gitsource import GitSource
from tests.support.gitserver import DEPLOYMENT, GitServer, Upstream

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with GitServer(tmp_path_factory.mktemp("srv")) as srv:
        yield srv


def _raw_tree(*entries: tuple[str, str, str]) -> bytes:
    """A tree object's bytes, entries (mode, name, sha) as given: no type checks."""
    return b"".join(
        f"{mode} {name}".encode() + b"\0" + binascii.unhexlify(sha) for mode, name, sha in entries
    )


def _write(up: Upstream, kind: str, data: bytes) -> str:
    """An object written as it is (`--literally`: C git checks nothing about it)."""
    return up.git("hash-object", "-t", kind, "-w", "--literally", "--stdin", input=data)


def _point_branch(up: Upstream, sha: str) -> None:
    """Point the branch at any object. (`git update-ref` refuses a non-commit for a branch;
    a hostile server does not ask it.)"""
    (up.path / "refs" / "heads" / up.branch).write_text(f"{sha}\n")


def _commit_of_tree(up: Upstream, tree: str) -> str:
    return up.git("commit-tree", tree, "-p", up.tip(), "-m", "crafted")


def craft(up: Upstream, case: str) -> None:
    """Move the branch to a crafted object of the kind `case` names."""
    blob = up.git("hash-object", "-w", "--stdin", input=b"kind: Deployment\n")
    tree = up.git("mktree", input=f"100644 blob {blob}\tb.yaml\n".encode())
    if case == "branch-names-a-tag":
        up.git("tag", "-a", "-m", "a tag", "v1", up.tip())
        _point_branch(up, up.git("rev-parse", "refs/tags/v1"))
    elif case == "branch-names-a-tree":
        _point_branch(up, tree)
    elif case == "branch-names-a-blob":
        _point_branch(up, blob)
    elif case == "file-entry-names-a-tree":
        apps = _write(up, "tree", _raw_tree(("100644", "a.yaml", tree)))
        top = up.git("mktree", input=f"040000 tree {apps}\tapps\n".encode())
        _point_branch(up, _commit_of_tree(up, top))
    elif case == "folder-entry-names-a-blob":
        _point_branch(
            up, _commit_of_tree(up, _write(up, "tree", _raw_tree(("40000", "apps", blob))))
        )
    else:
        assert case == "commit-tree-is-a-blob"
        body = f"tree {blob}\nparent {up.tip()}\nauthor A <a@example.com> 0 +0000\n"
        body += "committer A <a@example.com> 0 +0000\n\ncrafted\n"
        _point_branch(up, _write(up, "commit", body.encode()))


CASES = [
    "branch-names-a-tag",
    "branch-names-a-tree",
    "branch-names-a-blob",
    "file-entry-names-a-tree",
    "folder-entry-names-a-blob",
    "commit-tree-is-a-blob",
]
# C git's upload-pack will not pack a tree walk that breaks types ("possible repository
# corruption"): over HTTP those are its server error; a local path reads them as they are.
C_GIT_REFUSES = {"folder-entry-names-a-blob", "commit-tree-is-a-blob"}


@pytest.mark.parametrize("transport", ["http", "path"])
@pytest.mark.parametrize("case", CASES)
def test_an_object_of_the_wrong_type_is_a_coded_error(server, tmp_path, transport, case):
    up = Upstream(server.root / f"objects{next(_names)}.git")
    good = up.commit({"apps/a.yaml": DEPLOYMENT.format(n=1)}, "good")
    url = server.url(up.path.name) if transport == "http" else str(up.path)
    source = GitSource(GitConfig(url=url, path="apps", timeout=5.0), tmp_path / "state")
    assert source.poll().revision == good
    craft(up, case)

    with pytest.raises(SourceError) as caught:
        source.snapshot(source.poll().revision)
    if transport == "http" and case in C_GIT_REFUSES:
        assert caught.value.code == "GIT_SERVER_ERROR"
    else:
        assert caught.value.code == "GIT_OBJECT_INVALID"
        assert "object where a" in caught.value.message
    # The last good commit stays held and readable, the local copy is not discarded.
    held = source.held_revision()
    assert held == good or case == "file-entry-names-a-tree"  # its commit is a commit
    assert dict(source.snapshot(good).files) == {"a.yaml": DEPLOYMENT.format(n=1).encode()}
    assert Path(tmp_path / "state" / "git" / "repo" / "HEAD").exists()
