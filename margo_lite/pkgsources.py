"""Where one package's bytes, detached signature and keys come from, before anything trusts them.

A component names its package (`packageLocation`) and its key (`keyLocation`) as an
http(s) URL or a path in the desired-state repository. `Inputs` reads them for one
`packages.PackageStore.prepare`: URLs through the store's HTTP cache (the `fetch` it is
given), repository paths from the revision's files. It remembers the URLs it used, so the
store can tie each cached download to the ready folders built from it. Nothing here
verifies, extracts or caches.
"""

from __future__ import annotations

import hashlib
import posixpath
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from margo_lite import fileio, logs, pgp, pkgfiles
from margo_lite.config import PackagesConfig
from margo_lite.errors import DownloadError, PackageError

MAX_SIDE_FILE = 1 << 20  # signatures and keys

#: (url, byte limit) -> the body as a blob file: the store's HTTP cache.
Fetch = Callable[[str, int], Path]


class Inputs:
    """One prepare's package, signature and keys; `used_urls` lists what was downloaded."""

    def __init__(self, cfg: PackagesConfig, repo_files: Mapping[str, bytes], fetch: Fetch) -> None:
        self._cfg = cfg
        self._repo_files = repo_files
        self._fetch = fetch
        self.used_urls: list[str] = []

    def package(
        self, location: str, work: Path
    ) -> tuple[pkgfiles.Raw | None, dict[str, bytes] | None]:
        """The package as raw bytes in a file, or as the files of a repository folder."""
        if pkgfiles.is_url(location):
            blob = self._download(location, self._cfg.max_size)
            basename = posixpath.basename(urllib.parse.urlsplit(location).path)
            return pkgfiles.Raw(logs.sanitize_url(location), blob, basename, blob.name), None
        if "://" in location:
            raise PackageError(
                f"packageLocation {logs.sanitize_url(location)}: only http(s) URLs "
                "or paths in the repository are supported",
                code="PACKAGE_INVALID",
            )
        path = pkgfiles.repo_path(location, "packageLocation")
        if path in self._repo_files:
            return self._raw_from_bytes(path, self._repo_files[path], work), None
        return None, pkgfiles.repo_folder(path, self._repo_files)

    def keyring(self, key_location: str | None) -> bytes | None:
        """The binary keys signatures must verify against; None when none is required."""
        if key_location is None and not self._cfg.require_signature:
            return None
        if self._cfg.trusted_keys:  # pinned: whatever keyLocation says
            return pgp.keyring_from_files(
                self._cfg.trusted_keys, setting="packages.trusted_keys", refuse=pgp.key_error
            )
        if key_location is None:
            raise PackageError(
                "packages.require_signature is set, but the component has no keyLocation "
                "and no packages.trusted_keys are configured",
                code="SIGNATURE_MISSING",
            )
        if pkgfiles.is_url(key_location):
            data = self._download(key_location, MAX_SIDE_FILE).read_bytes()
            name = logs.sanitize_url(key_location)
        else:
            path = pkgfiles.repo_path(key_location, "keyLocation")
            if path not in self._repo_files:
                raise PackageError(
                    f"keyLocation {path!r}: no such file in the repository", code="KEY_INVALID"
                )
            data, name = self._repo_files[path], path
        return pgp.dearmor(data, source=f"keyLocation {name}")

    def signature(self, location: str, raw: pkgfiles.Raw) -> bytes:
        """The detached signature beside the package: `.asc` or `.sig` after its URL's path,
        or beside its path in the repository."""
        if not pkgfiles.is_url(location):
            return pkgfiles.repo_signature(raw.name, self._repo_files)
        for suffix in pkgfiles.SIGNATURE_SUFFIXES:
            parts = urllib.parse.urlsplit(location)  # the suffix goes on the path, not the query
            beside = urllib.parse.urlunsplit(parts._replace(path=parts.path + suffix, fragment=""))
            try:
                return self._download(beside, MAX_SIDE_FILE).read_bytes()
            except DownloadError as exc:
                if exc.status in (404, 410):
                    continue
                raise
        raise PackageError(
            f"{logs.sanitize_url(location)}: no detached signature (.asc or .sig) beside the "
            "package",
            code="SIGNATURE_MISSING",
        )

    def _download(self, url: str, limit: int) -> Path:
        blob = self._fetch(url, limit)
        self.used_urls.append(url)
        return blob

    def _raw_from_bytes(self, path: str, data: bytes, work: Path) -> pkgfiles.Raw:
        if len(data) > self._cfg.max_size:
            raise PackageError(
                f"{path} is {len(data)} bytes, more than packages.max_size",
                code="PACKAGE_TOO_LARGE",
            )
        file = work / "raw"
        fileio.create_file(file, data)
        return pkgfiles.Raw(path, file, posixpath.basename(path), hashlib.sha256(data).hexdigest())
