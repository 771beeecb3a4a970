"""What a package is made of, before and after it is trusted: raw bytes, repository files.

Pure helpers of the package cache (`packages`): a package given as a path in the
desired-state repository (one file, or a folder of files), its detached signature beside
it, the identity of a folder's content, a package that is one bare compose file, and the
compose file that must be at the root of every ready folder. Nothing here downloads or
caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from margo_lite import archive, fileio, logs, yamlload
from margo_lite.constants import COMPOSE_FILE_NAMES
from margo_lite.errors import InvalidYamlError, PackageError
from margo_lite.valueclass import dataclass

SIGNATURE_SUFFIXES = (".asc", ".sig")


@dataclass(frozen=True)
class Raw:
    """A package's bytes as they came, before anything trusts them."""

    name: str  # for messages: a sanitized URL or a repository path
    file: Path  # the bytes, on disk
    basename: str  # last part of the location, to name a bare compose file
    sha256: str


def is_url(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(archive.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def url_key(url: str) -> str:
    """Index key of a URL: its digest, so a token in a query string is never written down."""
    return hashlib.sha256(url.encode()).hexdigest()


def repo_path(location: str, what: str) -> str:
    try:
        path = archive.normalize_relative(location.strip())
    except ValueError as exc:
        raise PackageError(f"{what} {location!r}: {exc}", code="PACKAGE_INVALID") from None
    if not path:
        raise PackageError(f"{what} {location!r}: names no file or folder", code="PACKAGE_INVALID")
    return path


def repo_signature(path: str, repo_files: Mapping[str, bytes]) -> bytes:
    for suffix in SIGNATURE_SUFFIXES:
        if path + suffix in repo_files:
            return repo_files[path + suffix]
    raise PackageError(
        f"{path}: no detached signature (.asc or .sig) beside the package in the repository",
        code="SIGNATURE_MISSING",
    )


def repo_folder(path: str, repo_files: Mapping[str, bytes]) -> dict[str, bytes]:
    prefix = path + "/"
    files = {
        name[len(prefix) :]: data for name, data in repo_files.items() if name.startswith(prefix)
    }
    if not files:
        raise PackageError(
            f"packageLocation {path!r}: no such file or folder in the repository",
            code="PACKAGE_INVALID",
        )
    return files


def folder_id(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256(b"margo-lite folder v1\n")
    for name in sorted(files):
        encoded = name.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s %d\n" % (len(encoded), encoded, len(files[name])))
        digest.update(files[name])
    return "folder-" + digest.hexdigest()


def write_bare_compose(raw: Raw, data: bytes, dest: Path) -> None:
    """A package that is one compose file: it must at least be a YAML mapping."""
    try:
        document = yamlload.load_one(data)
    except InvalidYamlError as exc:
        raise PackageError(
            f"{raw.name}: neither a tar archive nor a compose file ({exc.message})",
            code="PACKAGE_INVALID",
        ) from None
    if not isinstance(document, dict):
        raise PackageError(
            f"{raw.name}: neither a tar archive nor a compose file (YAML mapping)",
            code="PACKAGE_INVALID",
        )
    name = raw.basename if raw.basename in COMPOSE_FILE_NAMES else COMPOSE_FILE_NAMES[0]
    fileio.create_file(dest / name, data)


def compose_name(folder: Path) -> str | None:
    for name in COMPOSE_FILE_NAMES:
        if (folder / name).is_file():  # a link here was checked to stay inside the package
            return name
    return None


def missing_compose_message(location: str, dest: Path) -> str:
    shown = logs.sanitize_url(location) if is_url(location) else location
    message = f"{shown}: no compose file ({', '.join(COMPOSE_FILE_NAMES)}) at the package root"
    nested = sorted(
        str(path.relative_to(dest))
        for name in COMPOSE_FILE_NAMES
        for path in dest.glob(f"*/{name}")
    )
    if nested:
        message += f"; found {nested[0]} (the compose file must be at the root)"
    return message
