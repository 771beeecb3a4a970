"""Application packages: fetched, verified, extracted and cached as ready folders.

`PackageStore.prepare` turns a component's `packageLocation` (+ `keyLocation`) into a
folder with the compose file at its root. The order is fixed: get the raw bytes, verify
the detached signature when one is required, and only then read the bytes (sniff,
extract); `pkgsources` reads the package, its signature and its keys. Ready folders live
under `cache_dir/pkgs/<hex>`, named by the digest of the extracted tree, each built in
`cache_dir/tmp` and renamed into place once complete and synced, so a crash leaves either
no folder or a whole one.

Downloads are cached like an HTTP cache: the raw body under `blobs/<sha256>` and, per URL,
the server's ETag / Last-Modified. The next `prepare` of the same URL sends a
conditional request; "304 Not Modified" costs no body, and the raw bytes are still at
hand to verify the signature again (a changed key or signature must be checked against
the same package) and to find the ready folder. A URL-to-digest index without the raw
bytes would save disk but would have to download again whenever a signature or key
changed; caching by URL alone would never see a package republished under the same URL.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from margo_lite import (
    archive,
    fileio,
    logs,
    oci,
    pgp,
    pkgfiles,
    pkgmanifest,
    pkgsources,
    proxy,
)
from margo_lite.config import PackagesConfig
from margo_lite.errors import (
    PackageError,
    PackageTransientError,
    StateCorruptError,
    StateError,
)
from margo_lite.statestore import StateStore
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from margo_lite.download import Downloader
    from margo_lite.ocipull import Puller

log = logs.get(__name__)

INDEX = "index.json"
MANIFESTS = "manifests"  # what each ready folder shipped (pkgmanifest), beside pkgs/


@dataclass(frozen=True)
class PreparedPackage:
    path: Path  # ready folder, compose file at its root
    compose_file: Path
    digest: str  # "sha256:<hex>" of the extracted tree; the cache key


class PackageStore:
    """The package cache under `cache_dir`, and the one way packages get into it."""

    def __init__(
        self,
        cfg: PackagesConfig,
        cache_dir: Path,
        *,
        downloader: Downloader | None = None,
        proxies: proxy.Settings = proxy.DIRECT,
    ) -> None:
        self._cfg = cfg
        self._root = Path(cache_dir)
        self._pkgs = self._root / "pkgs"
        self._blobs = self._root / "blobs"
        self._tmp = self._root / "tmp"
        self._limits = archive.Limits(max_bytes=cfg.max_size)
        self._proxies = proxies
        if downloader is not None:  # else made on first use (`_downloader`)
            self._downloader = downloader
        self._lock = threading.Lock()
        try:
            for folder in (self._root, self._pkgs, self._blobs, self._tmp):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            for leftover in self._tmp.iterdir():  # from a crash: never complete, never used
                _remove(leftover)
        except OSError as exc:
            raise _cache_error(self._root, exc) from None
        self._state = StateStore(self._root)
        self._index = self._load_index()

    @functools.cached_property
    def _downloader(self) -> Downloader:
        """Made on first use: an idle agent downloads nothing and need not load this code."""
        from margo_lite.download import Downloader  # late: only a download needs it

        cfg = self._cfg
        return Downloader(
            timeout=cfg.timeout, deadline=cfg.deadline, ca_file=cfg.ca_file, proxies=self._proxies
        )

    @functools.cached_property
    def _oci(self) -> Puller:
        from margo_lite.ocipull import Puller  # late: only an OCI package needs it

        return Puller(self._downloader, self._cfg.max_size)

    # --- public -------------------------------------------------------------------------------

    def prepare(
        self, package_location: str, key_location: str | None, repo_files: Mapping[str, bytes]
    ) -> PreparedPackage:
        """A ready folder for the package; verified first when a signature is required."""
        with self._lock:
            work = self._tmp / f"prepare-{os.urandom(16).hex()}"
            try:
                work.mkdir(mode=0o700)
                with self._downloader.one_deadline():  # package, signature, key: one budget
                    return self._prepare(package_location, key_location, repo_files, work)
            except (OSError, StateError) as exc:
                raise _cache_error(self._root, exc) from None
            finally:
                _remove(work)

    def ready(self, digest: str) -> PreparedPackage | None:
        """The ready folder of a package prepared before, without any network: what
        restoring a stopped container needs while the package server is away."""
        folder = self._pkgs / digest.removeprefix("sha256:")
        name = pkgfiles.compose_name(folder) if folder.is_dir() else None
        return None if name is None else PreparedPackage(folder, folder / name, digest)

    def verify(self, digest: str) -> PreparedPackage:
        """The ready folder of `digest`, every file it shipped unchanged (PACKAGE_TAMPERED
        if not, PACKAGE_MISSING if it is gone): what self-heal starts from."""
        with self._lock:
            package = self.ready(digest)
            if package is None:
                raise PackageTransientError(
                    "the package this component was installed from is no longer cached",
                    code="PACKAGE_MISSING",
                )
            try:
                self._check_unchanged(package)
            except (OSError, StateError) as exc:
                raise _cache_error(self._root, exc) from None
            return package

    def _check_unchanged(self, package: PreparedPackage) -> None:
        name = f"{MANIFESTS}/{package.digest.removeprefix('sha256:')}.json"
        manifest = self._state.read_json(name)
        if isinstance(manifest, dict):
            pkgmanifest.check(package.path, manifest, f"package {package.digest[:19]}")
        elif archive.tree_digest(package.path) != package.digest:  # from an older version
            raise PackageTransientError(
                f"package {package.digest[:19]} changed since it was checked",
                code=pkgmanifest.CODE,
            )

    def prune(self, keep: set[str]) -> None:
        """Drop ready folders whose digest is not in `keep`, then hold the cache to its bound."""
        with self._lock:
            try:
                self._prune(keep)
            except (OSError, StateError) as exc:
                raise _cache_error(self._root, exc) from None

    # --- preparing -----------------------------------------------------------------------------

    def _prepare(
        self,
        location: str,
        key_location: str | None,
        repo_files: Mapping[str, bytes],
        work: Path,
    ) -> PreparedPackage:
        if oci.is_location(location):
            return self._prepare_oci(location, key_location, work)
        inputs = pkgsources.Inputs(self._cfg, repo_files, self._fetch)
        keyring = inputs.keyring(key_location)
        raw, folder = inputs.package(location, work)
        if keyring is not None:
            if raw is None:
                raise PackageError(
                    f"package folder {location!r} in the repository cannot carry a detached "
                    "signature; sign a tarball instead (or sign the commits: git.trusted_keys)",
                    code="SIGNATURE_MISSING",
                )
            signature = inputs.signature(location, raw)
            signer = pgp.verify_detached(raw.file, signature, keyring, what=raw.name)
            log.info("package %s: signature verified (key %s)", raw.name, signer)
        source_id = raw.sha256 if raw else pkgfiles.folder_id(folder or {})
        prepared = self._cached(source_id) or self._build(raw, folder, location, work)
        self._remember(source_id, prepared.digest, inputs.used_urls)
        return prepared

    def _prepare_oci(self, location: str, key_location: str | None, work: Path) -> PreparedPackage:
        """An OCI artifact (`oci.location(repository, revision)`), cached by its manifest's
        digest: a package prepared before costs one manifest request and no blob."""
        if key_location is not None or self._cfg.require_signature:
            raise PackageError(
                f"{oci.parse(location).shown}: OCI packages carry no detached signature",
                code="SIGNATURE_MISSING",
            )
        resolved = self._oci.resolve(location, work)
        prepared = self._cached(resolved.source_id)
        if prepared is None:
            pulled = self._oci.pull(resolved, work)
            layer = pulled.layer
            raw = pkgfiles.Raw(resolved.shown, layer, "", pulled.sha256) if layer else None
            prepared = self._build(raw, pulled.files, resolved.shown, work)
        self._remember(resolved.source_id, prepared.digest, [])
        return prepared

    def _fetch(self, url: str, limit: int) -> Path:
        """The body of `url` as a blob file, asking the server only whether it changed."""
        entry = self._index["http"].get(pkgfiles.url_key(url))
        validators = None
        if entry and (entry.get("etag") or entry.get("last_modified")):
            blob = self._blobs / entry["blob"]
            if blob.is_file() and pkgfiles.sha256_file(blob) == entry["blob"]:
                from margo_lite.download import Validators  # late, as in `_downloader`

                validators = Validators(entry.get("etag"), entry.get("last_modified"))
        tmp = self._tmp / f"download-{os.urandom(16).hex()}"
        fetched = self._downloader.fetch(url, tmp, limit=limit, validators=validators)
        now = time.time()
        if not fetched.modified:
            assert entry is not None
            entry["used"] = now
            log.debug("%s not modified; using the cached copy", logs.sanitize_url(url))
            return self._blobs / entry["blob"]
        blob = self._blobs / fetched.sha256
        if blob.exists():
            tmp.unlink()
        else:
            os.rename(tmp, blob)
            fileio.fsync_dir(self._blobs)
        log.info("downloaded %s (%d bytes)", logs.sanitize_url(url), fetched.size)
        same_blob = entry is not None and entry["blob"] == fetched.sha256
        self._index["http"][pkgfiles.url_key(url)] = {
            "url": logs.sanitize_url(url),
            "blob": fetched.sha256,
            "etag": fetched.validators.etag,
            "last_modified": fetched.validators.last_modified,
            "used": now,
            "digests": entry["digests"] if same_blob and entry else [],
        }
        self._save_index()
        return blob

    # --- building ready folders ---------------------------------------------------------------

    def _cached(self, source_id: str) -> PreparedPackage | None:
        known = self._index["sources"].get(source_id)
        if not known:
            return None
        package = self.ready(known["digest"])
        if package is not None:
            try:
                self._check_unchanged(package)
            except (PackageError, PackageTransientError) as exc:  # a container wrote into it
                log.warning("%s; preparing it again", exc.message)
                self._discard(package.path)
                return None
        return package

    def _build(
        self, raw: pkgfiles.Raw | None, files: dict[str, bytes] | None, location: str, work: Path
    ) -> PreparedPackage:
        dest = work / "package"
        dest.mkdir(mode=0o755)
        if raw is None:
            archive.write_tree(files or {}, dest, self._limits)
        else:
            with open(raw.file, "rb") as f:
                head = f.read(512)
                f.seek(0)
                if archive.is_archive(head):
                    archive.extract(f, dest, self._limits)
                else:
                    pkgfiles.write_bare_compose(raw, f.read(), dest)
        name = pkgfiles.compose_name(dest)
        if name is None:
            raise PackageError(
                pkgfiles.missing_compose_message(location, dest), code="COMPOSE_FILE_MISSING"
            )
        digest = archive.tree_digest(dest)
        self._state.write_json(
            f"{MANIFESTS}/{digest.removeprefix('sha256:')}.json", pkgmanifest.take(dest)
        )
        fileio.sync_tree(dest)
        final = self._pkgs / digest.removeprefix("sha256:")
        if not final.exists():
            os.rename(dest, final)
            fileio.fsync_dir(self._pkgs)
        log.info("package %s ready: %s", raw.name if raw else location, digest)
        return PreparedPackage(final, final / name, digest)

    def _remember(self, source_id: str, digest: str, used_urls: list[str]) -> None:
        now = time.time()
        self._index["sources"][source_id] = {"digest": digest, "used": now}
        for url in used_urls:
            entry = self._index["http"].get(pkgfiles.url_key(url))
            if entry is not None and digest not in entry["digests"]:
                entry["digests"].append(digest)
        self._save_index()

    # --- index and pruning --------------------------------------------------------------------

    def _load_index(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"http": {}, "sources": {}}
        try:
            data = self._state.read_json(INDEX)
        except StateCorruptError as exc:  # a cache: losing it costs downloads, nothing more
            log.warning("package cache index unreadable (%s); starting afresh", exc.message)
            return empty
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), dict) for k in ("http", "sources")
        ):
            return empty
        return data

    def _save_index(self) -> None:
        self._state.write_json(INDEX, self._index)

    def _prune(self, keep: set[str]) -> None:
        before = json.dumps(self._index, sort_keys=True)  # unchanged: not written again
        for folder in list(self._pkgs.iterdir()):
            if f"sha256:{folder.name}" not in keep:
                self._discard(folder)
        for manifest in self._state.names(MANIFESTS):
            if f"sha256:{Path(manifest).stem}" not in keep:
                self._state.delete(manifest)
        index = self._index
        index["sources"] = {k: v for k, v in index["sources"].items() if v["digest"] in keep}
        index["http"] = {u: e for u, e in index["http"].items() if keep & set(e["digests"])}
        self._drop_unreferenced_blobs()
        total = self._size()
        for key in sorted(index["http"], key=lambda k: index["http"][k]["used"]):
            if total <= self._cfg.cache_size:
                break
            del index["http"][key]
            total -= self._drop_unreferenced_blobs()
        if total > self._cfg.cache_size:
            log.warning(
                "package cache holds %d bytes of packages in use, more than packages.cache_size",
                total,
            )
        if json.dumps(index, sort_keys=True) != before:
            self._save_index()

    def _drop_unreferenced_blobs(self) -> int:
        referenced = {entry["blob"] for entry in self._index["http"].values()}
        freed = 0
        for blob in list(self._blobs.iterdir()):
            if blob.name not in referenced:
                freed += blob.lstat().st_size
                blob.unlink()
        return freed

    def _size(self) -> int:
        blobs = sum(blob.lstat().st_size for blob in self._blobs.iterdir())
        return blobs + sum(archive.tree_size(folder) for folder in self._pkgs.iterdir())

    def _discard(self, folder: Path) -> None:
        """Move out of the cache first, so a crash never leaves a half-deleted package."""
        trash = self._tmp / f"trash-{os.urandom(16).hex()}"
        os.rename(folder, trash)
        fileio.fsync_dir(folder.parent)
        _remove(trash)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _cache_error(root: Path, exc: OSError | StateError) -> PackageTransientError:
    detail = exc.message if isinstance(exc, StateError) else (exc.strerror or str(exc))
    return PackageTransientError(f"package cache {root}: {detail}", code="PACKAGE_CACHE_IO")
