"""What a ready package folder held when it was checked, to find out later if it changed.

A package folder is bound into containers (`./data:/data`, `.:/pkg`), so a container may
write into it. Files it adds are its data; a file the package shipped that is now changed,
replaced or gone means the package is no longer what was checked: restoring a component
from it fails with `PACKAGE_TAMPERED` and nothing starts. The manifest lives outside the
folder (where containers bind nothing), one JSON object of relative path -> fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from margo_lite import archive
from margo_lite.errors import PackageTransientError

CODE = "PACKAGE_TAMPERED"


def take(root: Path) -> dict[str, str]:
    """Relative path -> fingerprint of every entry below `root` (links not followed)."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            found[path.relative_to(root).as_posix()] = _fingerprint(path)
    return found


def check(root: Path, manifest: dict[str, str], what: str) -> None:
    """Raise PACKAGE_TAMPERED naming the first shipped entry that changed or went away."""
    for rel in sorted(manifest):
        path = root / rel
        try:
            now = _fingerprint(path)
        except FileNotFoundError:
            now = "missing"
        if now != manifest[rel]:
            raise PackageTransientError(
                f"{what}: {rel} changed since the package was checked ({now.split(' ')[0]}); "
                "nothing is started from it",
                code=CODE,
            )


def _fingerprint(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return "link " + os.readlink(path)
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    if stat.S_ISREG(info.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(archive.CHUNK), b""):
                digest.update(chunk)
        mode = "x" if info.st_mode & 0o111 else "-"
        return f"file {mode} {digest.hexdigest()}"
    return "special"
