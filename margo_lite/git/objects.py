"""Typed access to Git objects: a desired-state repository is hostile input.

A tree entry's mode, a commit's `tree` and a branch all promise an object of one type; a
crafted repository can break the promise (a folder entry naming a blob, a branch naming a
tag, a tree or a blob). Every read that relies on the type goes through `typed`, so a
broken promise is `GIT_OBJECT_INVALID`, never an AttributeError deep in a walk.
"""

from __future__ import annotations

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ShaFile

from margo_lite.errors import GitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T", bound=ShaFile)


def typed(store: BaseObjectStore, sha: bytes, kind: type[T], what: str) -> T:
    """The object `sha`, which `what` (e.g. "branch main", "folder apps") says is a `kind`.

    KeyError when it is missing (the callers tell damage from an incomplete fetch)."""
    obj = store[sha]
    if not isinstance(obj, kind):
        raise GitError(
            f"{what} names {sha.decode('ascii', 'replace')}, a {obj.type_name.decode()} "
            f"object where a {kind.type_name.decode()} must be",
            code="GIT_OBJECT_INVALID",
        )
    return obj
