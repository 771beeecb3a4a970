"""The desired state from a Margo 1.0 WFM: the State Manifest and its documents.

A poll is one conditional GET of `/api/v1/deployments` (`If-None-Match` with the accepted
manifest's ETag); `304` means unchanged and nothing else is fetched or written. A `200`
manifest is checked (`wfmmanifest`), refused when its `manifestVersion` is not above the
accepted one (unless it is byte-identical: a replay of what is held), and then only the
documents not held yet are fetched: one by one by their content-addressed url, or the
whole bundle when most of them changed. Every body's sha256 must be the manifest's; any
mismatch refuses the whole manifest. Only then is it accepted: the documents go to a cache
by digest under `state_dir/wfm/documents` (each written atomically), then the accepted
version, ETag and document list to the `wfm/accepted.json` record. A crash in between
leaves the previous manifest accepted and its documents still cached.

The revision of a snapshot is the manifest version as a decimal string ("17"), so status
reports can carry it as `adoptedManifestVersion`; its files are `<deploymentId>.yaml`.
The HTTP pool is injected (mTLS and the WFM's identity checks are the pool's business);
`wfmhttp` makes each GET and codes its failures.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

from margo_lite import logs, wfmhttp, wfmmanifest
from margo_lite.errors import StateError, WfmError, WfmTransientError
from margo_lite.source import PollResult, Snapshot
from margo_lite.statestore import StateStore, remove_write_leftovers, write_file_atomic
from margo_lite.valueclass import dataclass
from margo_lite.wfmmanifest import Manifest, Ref, digest_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

RECORD = "wfm/accepted.json"
CACHE_DIR = ("wfm", "documents")
CACHE_SPARE = 64  # cached documents kept beyond the accepted manifest's (flip-flops, restarts)


@dataclass(frozen=True)
class Accepted:
    """The last accepted manifest, as recorded."""

    version: int
    etag: str | None
    manifest_digest: str  # over the manifest's exact bytes: a byte-identical replay is fine
    documents: tuple[tuple[str, str], ...]  # (deploymentId, digest)


class WfmSource:
    """`GET {wos.url}/api/v1/deployments` and what it names, over an injected pool."""

    def __init__(self, url: str, state_dir: Path, pool: Any) -> None:
        self._base = url.rstrip("/")
        self._shown = logs.sanitize_url(self._base)
        self._pool = pool
        self._store = StateStore(state_dir)
        self._cache = Path(state_dir).joinpath(*CACHE_DIR)
        self._accepted: Accepted | None = None
        self._loaded = False

    # --- the protocol ---------------------------------------------------------------------

    def poll(self) -> PollResult:
        held = self._held()
        headers = {"Accept": wfmmanifest.MEDIA_TYPE}
        if held is not None and held.etag:
            headers["If-None-Match"] = f'"{held.etag}"'
        status, body, etag = self._get(
            "/api/v1/deployments",
            headers,
            wfmmanifest.MAX_MANIFEST_BYTES,
        )
        if status == 304:
            if held is None or not held.etag:
                raise WfmTransientError(
                    f"{self._shown} answered 304 to an unconditional request",
                    code="WFM_PROTOCOL_ERROR",
                )
            return PollResult(str(held.version), changed=False)
        manifest = wfmmanifest.parse(body)
        body_digest = digest_of(body)
        etag = etag or body_digest  # the spec's ETag is the body's digest
        if held is not None and manifest.version <= held.version:
            if body_digest != held.manifest_digest:
                log.error(
                    "SECURITY: %s sent manifestVersion %d, not above the accepted %d; refused",
                    self._shown, manifest.version, held.version,
                )  # fmt: skip
                raise WfmError(
                    f"manifestVersion {manifest.version} is not above the accepted "
                    f"{held.version}: a rollback or replay, refused",
                    code="WFM_ROLLBACK_REFUSED",
                )
            # The same bytes again (a new ETag, or a cached document was lost): keep them.
            self._store_documents(self._fetch_documents(manifest))
            if etag != held.etag:
                self._record(Accepted(held.version, etag, held.manifest_digest, held.documents))
            return PollResult(str(held.version), changed=False)
        documents = self._fetch_documents(manifest)
        self._store_documents(documents)
        accepted = Accepted(
            manifest.version,
            etag,
            body_digest,
            tuple((dep, ref.digest) for dep, ref in manifest.deployments),
        )
        self._record(accepted)
        self._prune({d for _dep, d in accepted.documents})
        log.info(
            "accepted manifestVersion %d (%d deployments)",
            manifest.version,
            len(accepted.documents),
        )
        return PollResult(str(manifest.version), changed=True)

    def held_revision(self) -> str | None:
        held = self._held()
        return None if held is None else str(held.version)

    def snapshot(self, revision: str) -> Snapshot:
        """The accepted manifest's documents from the cache (no network), each checked again."""
        held = self._held()
        if held is None or revision != str(held.version):
            raise WfmTransientError(f"manifest version {revision} is not held", code="WFM_NOT_HELD")
        files: dict[str, bytes] = {}
        for dep, digest in held.documents:
            data = self._cached(digest)
            if data is None:
                self._forget_etag(held)
                raise WfmTransientError(
                    f"the cached document of deployment {dep} ({digest[:19]}...) is missing or "
                    "damaged; it is fetched again at the next poll",
                    code="WFM_CACHE_CORRUPT",
                )
            files[f"{dep}.yaml"] = data
        file_ids = {f"{dep}.yaml": dep for dep, _ in held.documents}
        return Snapshot(
            str(held.version), types.MappingProxyType(files), types.MappingProxyType(file_ids)
        )

    def close(self) -> None:
        """Nothing to release: the pool is its maker's (shared with the status client, its
        connections kept for the next poll)."""

    # --- fetching -------------------------------------------------------------------------

    def _fetch_documents(self, manifest: Manifest) -> dict[str, bytes]:
        """Every document of `manifest` by digest: from the cache, else fetched and verified."""
        found: dict[str, bytes] = {}
        missing: list[tuple[str, Ref]] = []
        total = 0
        for dep, ref in manifest.deployments:
            data = found.get(ref.digest) or self._cached(ref.digest)
            if data is None:
                missing.append((dep, ref))
            else:
                found[ref.digest] = data
                total += len(data)
        if not missing:
            return found
        budget = wfmmanifest.MAX_SNAPSHOT_BYTES - total
        if self._bundle_pays(manifest, len(missing)):
            assert manifest.bundle is not None
            log.info(
                "fetching the bundle (%d of %d documents changed)",
                len(missing),
                len(manifest.deployments),
            )
            data = self._fetch(manifest.bundle, "the bundle", wfmmanifest.MAX_SNAPSHOT_BYTES)
            return {**found, **wfmmanifest.read_bundle(data, manifest)}
        for dep, ref in missing:
            if ref.digest in found:
                continue
            data = self._fetch(ref, f"the document of deployment {dep}", budget)
            budget -= len(data)
            found[ref.digest] = data
        return found

    @staticmethod
    def _bundle_pays(manifest: Manifest, missing: int) -> bool:
        """The bundle when more than one document and at least half of them are missing:
        one request instead of many, for little more than the changed bytes."""
        return (
            manifest.bundle is not None and missing > 1 and 2 * missing >= len(manifest.deployments)
        )

    def _fetch(self, ref: Ref, what: str, limit: int) -> bytes:
        status, body, _etag = self._get(ref.url, {}, limit)
        if status != 200:
            raise WfmTransientError(
                f"{self._shown}: {what} answered HTTP {status}", code="WFM_PROTOCOL_ERROR"
            )
        actual = digest_of(body)
        if actual != ref.digest:
            log.error(
                "SECURITY: %s: %s has digest %s, the manifest says %s",
                self._shown,
                what,
                actual,
                ref.digest,
            )
            raise WfmError(
                f"{what} does not match its digest {ref.digest}; nothing of this manifest "
                "is applied",
                code="WFM_DIGEST_MISMATCH",
            )
        return body

    def _get(self, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes, str | None]:
        return wfmhttp.get(self._pool, self._base, self._shown, path, headers, limit)

    # --- local state ----------------------------------------------------------------------

    def _held(self) -> Accepted | None:
        if not self._loaded:
            self._accepted = self._read_record()
            self._loaded = True
            remove_write_leftovers(self._cache)
        return self._accepted

    def _read_record(self) -> Accepted | None:
        try:
            raw = self._store.read_json(RECORD)
        except StateError as exc:
            raise WfmError(
                f"cannot read the accepted manifest: {exc.message}", code="WFM_STORE_FAILED"
            ) from None
        if raw is None:
            return None
        try:
            return Accepted(
                int(raw["version"]),
                raw["etag"],
                str(raw["manifest_digest"]),
                tuple((str(d), str(g)) for d, g in raw["documents"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WfmError(
                f"the accepted-manifest record is damaged: {exc!r}", code="WFM_STORE_FAILED"
            ) from None

    def _record(self, accepted: Accepted) -> None:
        value = {
            "version": accepted.version,
            "etag": accepted.etag,
            "manifest_digest": accepted.manifest_digest,
            "documents": [list(pair) for pair in accepted.documents],
        }
        try:
            self._store.write_json(RECORD, value)
        except StateError as exc:
            raise WfmError(
                f"cannot record the accepted manifest: {exc.message}", code="WFM_STORE_FAILED"
            ) from None
        self._accepted = accepted

    def _forget_etag(self, held: Accepted) -> None:
        """Make the next poll fetch the manifest (and the missing documents) again."""
        if held.etag is not None:
            self._record(Accepted(held.version, None, held.manifest_digest, held.documents))

    def _cache_path(self, digest: str) -> Path:
        return self._cache / f"{digest.removeprefix('sha256:')}.yaml"

    def _cached(self, digest: str) -> bytes | None:
        try:
            data = self._cache_path(digest).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the cached document %s: %s", digest, exc.strerror)
            return None
        if digest_of(data) != digest:
            log.warning("the cached document %s is damaged; it is fetched again", digest)
            return None
        return data

    def _store_documents(self, documents: dict[str, bytes]) -> None:
        try:
            self._cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            for digest, data in documents.items():
                if self._cached(digest) is None:  # absent, or damaged: (re)write it
                    write_file_atomic(self._cache_path(digest), data, mode=0o600)
        except OSError as exc:
            raise WfmError(
                f"cannot write {self._cache}: {exc.strerror or exc}", code="WFM_STORE_FAILED"
            ) from None

    def _prune(self, keep: set[str]) -> None:
        """Keep the accepted documents and the CACHE_SPARE most recent others."""
        try:
            entries = [
                e for e in os.scandir(self._cache) if e.name.endswith(".yaml") and e.is_file()
            ]
        except OSError:
            return
        others = sorted(
            (e for e in entries if f"sha256:{e.name[:-5]}" not in keep),
            key=lambda e: e.stat().st_mtime,
            reverse=True,
        )
        for entry in others[CACHE_SPARE:]:
            try:
                os.unlink(entry.path)
            except OSError as exc:
                log.debug("cannot prune %s: %s", entry.path, exc)
