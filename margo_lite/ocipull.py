"""Pulls OCI compose packages from a registry, per the OCI distribution spec.

`GET /v2/<name>/manifests/<revision>` (an index leads to its Compose artifact's manifest),
then `GET /v2/<name>/blobs/<digest>` for each layer `oci.plan` chose. Every manifest and
blob is checked against its sha256 digest over the exact bytes before anything reads it.
All requests go through the package `Downloader`: TLS verified with `packages.ca_file`
(else the system store), the site proxy, timeouts, retries, one deadline per package and
the size limits of every other download.

When the registry answers 401 with `WWW-Authenticate: Bearer realm=...`, a token is fetched
from the realm (distribution token spec; basic credentials from `oci://user:password@host`
if given, else anonymous) and the request is sent once more with it. Tokens are kept in
memory until they expire, never written down, and masked in logs.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import urllib3

from margo_lite import logs, oci
from margo_lite.download import Downloader, Fetched
from margo_lite.errors import DownloadError, OciError, OciTransientError
from margo_lite.valueclass import dataclass

log = logs.get(__name__)

MAX_TOKEN_ANSWER = 64 << 10
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,8192}")
_PARAM = re.compile(r'([A-Za-z]+)="([^"]*)"')
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Resolved:
    """A revision resolved to its manifest: what to pull, and the cache key it has."""

    ref: oci.Reference
    manifest_digest: str
    plan: oci.Plan

    @property
    def source_id(self) -> str:
        return "oci-" + self.manifest_digest.removeprefix("sha256:")

    @property
    def shown(self) -> str:
        return f"{self.ref.shown} ({self.manifest_digest[:19]})"


@dataclass(frozen=True)
class Pulled:
    """The verified layers: files by name (Compose artifact) or the one tarball on disk."""

    files: dict[str, bytes] | None
    layer: Path | None
    sha256: str  # hex of the tarball layer


class Puller:
    """Resolves and pulls OCI packages with one downloader; remembers tokens until expiry."""

    def __init__(
        self, downloader: Downloader, max_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._downloader = downloader
        self._max_size = max_size
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def resolve(self, location: str, work: Path) -> Resolved:
        """The manifest the location's revision names, every layer checked (no blob yet)."""
        ref = oci.parse(location)
        what = ref.shown
        document, digest, kind = self._manifest(ref, ref.revision, work, what)
        if kind == "index":
            chosen = oci.choose(document, what)
            what = f"{ref.shown} ({chosen.digest[:19]})"
            document, digest, kind = self._manifest(ref, chosen.digest, work, what)
            if kind != "manifest":
                raise oci.invalid_manifest(f"{what}: an index inside an index")
        return Resolved(ref, digest, oci.plan(document, what, self._max_size))

    def pull(self, resolved: Resolved, work: Path) -> Pulled:
        """The layers of a resolved manifest, each verified against its digest."""
        ref, plan = resolved.ref, resolved.plan
        if plan.kind == "tar":
            layer = plan.layers[0][0]
            dest = work / f"layer-{uuid.uuid4().hex}"
            fetched = self._blob(ref, layer, dest, work)
            with open(dest, "rb") as f:
                if f.read(2) != _GZIP_MAGIC:
                    raise oci.invalid_manifest(f"{resolved.shown}: the tar+gzip layer is not gzip")
            return Pulled(None, dest, fetched.sha256)
        files: dict[str, bytes] = {}
        for layer, name in plan.layers:
            dest = work / f"blob-{uuid.uuid4().hex}"
            self._blob(ref, layer, dest, work)
            files[name] = dest.read_bytes()
            dest.unlink()
        return Pulled(files, None, "")

    # --- requests -----------------------------------------------------------------------------

    def _manifest(
        self, ref: oci.Reference, target: str, work: Path, what: str
    ) -> tuple[dict, str, str]:
        dest = work / f"manifest-{uuid.uuid4().hex}"
        fetched = self._get(ref, "manifests", target, dest, work, limit=oci.MAX_MANIFEST)
        data = dest.read_bytes()
        dest.unlink()
        digest = "sha256:" + fetched.sha256
        claimed = fetched.headers.get("docker-content-digest")
        for want in (target if target.startswith("sha256:") else None, claimed):
            if want is not None and oci.check_digest(want, f"{what}: manifest") != digest:
                raise OciError(
                    f"{what}: the manifest's bytes have digest {digest[:19]}..., "
                    f"not {want[:19]}...",
                    code="OCI_DIGEST_MISMATCH",
                )
        document = oci.read_json(data, f"{what}: manifest")
        return (
            document,
            digest,
            oci.kind_of(document, fetched.headers.get("content-type", ""), what),
        )

    def _blob(self, ref: oci.Reference, layer: oci.Descriptor, dest: Path, work: Path) -> Fetched:
        fetched = self._get(ref, "blobs", layer.digest, dest, work, limit=layer.size)
        if "sha256:" + fetched.sha256 != layer.digest or fetched.size != layer.size:
            dest.unlink()
            raise OciError(
                f"{ref.shown}: blob {layer.digest[:19]}... arrived as {fetched.size} bytes "
                f"with digest sha256:{fetched.sha256[:12]}...; nothing of it is used",
                code="OCI_DIGEST_MISMATCH",
            )
        return fetched

    def _get(
        self, ref: oci.Reference, kind: str, target: str, dest: Path, work: Path, *, limit: int
    ) -> Fetched:
        """GET a manifest or blob, fetching a token and trying once more on a 401."""
        key = (ref.host, ref.name, ref.user or "")
        what = f"{ref.shown}: {'manifest' if kind == 'manifests' else 'blob'} {target[:19]}"
        for attempt in (1, 2):
            headers = {"accept": oci.ACCEPT} if kind == "manifests" else {}
            token, until = self._tokens.get(key, ("", 0.0))
            if token and until > self._clock():
                headers["authorization"] = f"Bearer {token}"
            try:
                return self._downloader.fetch(
                    ref.url(kind, target), dest, limit=limit, headers=headers
                )
            except DownloadError as exc:
                if exc.status != 401 or attempt == 2 or not _bearer(exc.challenge):
                    raise _mapped(exc, what) from None
                self._tokens[key] = self._token(ref, _bearer(exc.challenge), work)
        raise AssertionError("unreachable")

    def _token(
        self, ref: oci.Reference, challenge: Mapping[str, str], work: Path
    ) -> tuple[str, float]:
        """A bearer token from the realm the registry named (distribution token spec)."""
        realm = challenge.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme.lower() != "https" or not parts.hostname or parts.username is not None:
            raise OciError(
                f"{ref.shown}: the registry's token realm {logs.sanitize_url(realm)[:120]!r} "
                "is not an https URL",
                code="OCI_AUTH_FAILED",
            )
        query = {"scope": challenge.get("scope") or f"repository:{ref.name}:pull"}
        if challenge.get("service"):
            query["service"] = challenge["service"]
        sep = "&" if parts.query else "?"
        url = realm.split("#", 1)[0] + sep + urllib.parse.urlencode(query)
        headers = {}
        if ref.user is not None:
            headers = urllib3.make_headers(basic_auth=f"{ref.user}:{ref.password or ''}")
        dest = work / f"token-{uuid.uuid4().hex}"
        what = f"{ref.shown}: token service {logs.sanitize_url(realm)}"
        try:
            self._downloader.fetch(url, dest, limit=MAX_TOKEN_ANSWER, headers=headers)
        except DownloadError as exc:
            raise _mapped(exc, what) from None
        answer = oci.read_json(dest.read_bytes(), what)
        dest.unlink()
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise OciError(f"{what}: the answer holds no usable token", code="OCI_AUTH_FAILED")
        logs.register_secret(token)
        lifetime = answer.get("expires_in")
        lifetime = lifetime if type(lifetime) is int and 0 < lifetime < 86400 else 60
        log.debug("%s: token fetched for %s", ref.shown, query["scope"])
        return token, self._clock() + max(1, lifetime - 5)


def _bearer(challenge: str | None) -> dict[str, str] | None:
    """The parameters of a `Bearer realm=...` challenge; None for any other (Basic)."""
    if not challenge or not challenge.strip().lower().startswith("bearer "):
        return None
    params = {k.lower(): v for k, v in _PARAM.findall(challenge[:4096])}
    return params if params.get("realm") else None


def _mapped(exc: DownloadError, what: str) -> OciError | DownloadError:
    """A coded OCI error for a registry's answer; proxy errors stay what they are."""
    status = exc.status
    if exc.code.startswith("PROXY_"):
        return exc
    if status in (404, 410):
        return OciError(f"{what}: not found (HTTP {status})", code="OCI_NOT_FOUND")
    if status in (401, 403):
        return OciError(f"{what}: access refused (HTTP {status})", code="OCI_AUTH_FAILED")
    if status is not None and status < 500:
        return OciError(f"{what}: the registry answered HTTP {status}", code="OCI_REFUSED")
    detail = (
        exc.message.split(": ", 1)[-1] if exc.message.startswith("cannot download") else exc.message
    )
    return OciTransientError(f"{what}: {detail}", code="OCI_UNREACHABLE")
