"""The WFM's State Manifest and deployment bundle, read strictly (Margo 1.0, rc.3).

Pure: bytes in, a `Manifest` or the documents of a bundle out, or a `WfmError` with a
code. Both come from a server margo-lite does not control, so everything is bounded and
checked before use: the JSON (no duplicate keys, no NaN, integers only where integers
are meant), every digest (`sha256:` and 64 lower-case hex digits; another algorithm makes
the whole manifest invalid, as the spec says), every `url` (a path below `/api/v1/`, never
an absolute URL that could send the device to another host), and the bundle (one gzip
member holding a tar of regular files at its root, exactly the manifest's documents).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections import Counter

from margo_lite import jsonvalue
from margo_lite.desired.model import DEPLOYMENT_ID  # the draft's grammar (a UUID fits)
from margo_lite.errors import WfmError
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MEDIA_TYPE = "application/vnd.margo.manifest.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.margo.bundle.v1+tar+gzip"
MAX_VERSION = 2**64 - 1
MAX_MANIFEST_BYTES = 4 << 20
MAX_SNAPSHOT_BYTES = 64 << 20  # all documents together: the Git source's bound
MAX_DOCUMENTS = 10_000  # the Git source's bound on files
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: A path below /api/v1/: RFC 3986 path characters, no query, no fragment, no dot segments.
_URL = re.compile(
    r"/api/v1/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+)*"
)
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Ref:
    """One content-addressed document (or the bundle) of a manifest."""

    digest: str  # sha256:<hex>
    url: str  # a path below /api/v1/, to append to wos.url
    size: int | None  # advisory only


@dataclass(frozen=True)
class Manifest:
    version: int
    bundle: Ref | None
    deployments: tuple[tuple[str, Ref], ...]  # (deploymentId, document), manifest order


def invalid(message: str) -> WfmError:
    return WfmError(f"the State Manifest is invalid: {message}", code="WFM_MANIFEST_INVALID")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse(body: bytes) -> Manifest:
    """The manifest in `body` (JSON), or WFM_MANIFEST_INVALID / WFM_URL_REFUSED."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise WfmError(
            f"the State Manifest is larger than {MAX_MANIFEST_BYTES} bytes", code="WFM_TOO_LARGE"
        )
    try:
        doc = json.loads(
            body.decode("utf-8"), object_pairs_hook=jsonvalue.unique_object, parse_constant=_refuse
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise invalid(f"must be a JSON object, not {_kind(doc)}")
    for key in ("manifestVersion", "bundle", "deployments"):
        if key not in doc:
            raise invalid(f"{key} is missing")
    version = _integer(doc["manifestVersion"], "manifestVersion", low=1)
    refs = doc["deployments"]
    if not isinstance(refs, list):
        raise invalid(f"deployments must be a list, not {_kind(refs)}")
    if len(refs) > MAX_DOCUMENTS:
        raise WfmError(
            f"the manifest lists more than {MAX_DOCUMENTS} deployments", code="WFM_TOO_LARGE"
        )
    deployments = []
    seen: set[str] = set()
    for i, item in enumerate(refs):
        where = f"deployments[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object, not {_kind(item)}")
        dep_id = item.get("deploymentId")
        if not isinstance(dep_id, str) or not DEPLOYMENT_ID.fullmatch(dep_id):
            raise invalid(f"{where}.deploymentId {_show(dep_id)} is not a deployment id")
        if dep_id.lower() in seen:
            raise invalid(f"{where}.deploymentId {dep_id!r} is listed twice")
        seen.add(dep_id.lower())
        deployments.append((dep_id, _ref(item, where)))
    bundle = doc["bundle"]
    if bundle is not None:
        if not isinstance(bundle, dict):
            raise invalid(f"bundle must be an object or null, not {_kind(bundle)}")
        if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise invalid(
                f"bundle.mediaType {_show(bundle.get('mediaType'))} is not {BUNDLE_MEDIA_TYPE}"
            )
        if not deployments:
            raise invalid("bundle must be null when there are no deployments")
        bundle = _ref(bundle, "bundle")
    return Manifest(version, bundle, tuple(deployments))


def _ref(item: dict, where: str) -> Ref:
    digest = item.get("digest")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise invalid(f"{where}.digest {_show(digest)} is not sha256:<64 lower-case hex digits>")
    url = item.get("url")
    if not isinstance(url, str):
        raise invalid(f"{where}.url must be a string, not {_kind(url)}")
    check_url(url, where)
    size = item.get("sizeBytes")
    if size is not None:
        size = _integer(size, f"{where}.sizeBytes", low=0)
    return Ref(digest, url, size)


def check_url(url: str, where: str = "url") -> None:
    """WFM_URL_REFUSED unless `url` is a plain path below /api/v1/ (to append to wos.url)."""
    segments = url.split("/")
    if (
        len(url) > 2048
        or not _URL.fullmatch(url)
        or any(s in (".", "..") or s.lower() in ("%2e", "%2e%2e", ".%2e", "%2e.") for s in segments)
    ):
        raise WfmError(
            f"{where} {_show(url)} is not a path below /api/v1/; absolute URLs and other "
            "hosts are refused",
            code="WFM_URL_REFUSED",
        )


def _integer(value: Any, where: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{where} must be an integer, not {_show(value)}")
    if not low <= value <= MAX_VERSION:
        raise invalid(f"{where} {value} is outside [{low}, 2^64-1]")
    return value


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- the bundle ------------------------------------------------------------------------------


def read_bundle(
    data: bytes, manifest: Manifest, budget: int = MAX_SNAPSHOT_BYTES
) -> dict[str, bytes]:
    """The bundle's documents keyed by digest: exactly one file per deployment of the
    manifest (matched by content digest, whatever the file is called), or WFM_BUNDLE_INVALID."""
    tar_bytes = _gunzip(data, budget + len(manifest.deployments) * 1536 + (1 << 20))
    found: dict[str, bytes] = {}
    names: set[str] = set()
    counts: Counter[str] = Counter()
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                if not member.isreg() or member.issparse():
                    raise _bad_bundle(f"member {member.name!r} is not a regular file")
                if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
                    raise _bad_bundle(f"member {member.name!r} is not a file at the archive root")
                if name in names:
                    raise _bad_bundle(f"member {member.name!r} appears twice")
                names.add(name)
                total += member.size
                if total > budget or len(names) > MAX_DOCUMENTS:
                    raise WfmError(
                        "the bundle unpacks to more than the size limit", code="WFM_TOO_LARGE"
                    )
                reader = tar.extractfile(member)
                content = reader.read() if reader is not None else b""
                if len(content) != member.size:
                    raise _bad_bundle(f"member {member.name!r} is truncated")
                digest = digest_of(content)
                counts[digest] += 1
                found[digest] = content
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise _bad_bundle(f"not a tar archive: {str(exc)[:120]}") from None
    wanted = Counter(ref.digest for _dep, ref in manifest.deployments)
    if counts != wanted:
        extra = sum((counts - wanted).values())
        missing = sum((wanted - counts).values())
        raise _bad_bundle(
            f"it holds {extra} file(s) the manifest does not list and lacks {missing} it lists"
        )
    return found


def _gunzip(data: bytes, limit: int) -> bytes:
    """One gzip member, decompressed to at most `limit` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    out = bytearray()
    try:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            out += inflater.decompress(view[start : start + _CHUNK], limit + 1 - len(out))
            while inflater.unconsumed_tail and len(out) <= limit:
                out += inflater.decompress(inflater.unconsumed_tail, limit + 1 - len(out))
            if len(out) > limit:
                raise WfmError(
                    "the bundle decompresses to more than the size limit", code="WFM_TOO_LARGE"
                )
        out += inflater.flush()
    except zlib.error as exc:
        raise _bad_bundle(f"not gzip data: {exc}") from None
    if not inflater.eof:
        raise _bad_bundle("the gzip stream is cut short")
    if inflater.unused_data:
        raise _bad_bundle("data follows the gzip stream")
    if len(out) > limit:
        raise WfmError("the bundle decompresses to more than the size limit", code="WFM_TOO_LARGE")
    return bytes(out)


def _bad_bundle(message: str) -> WfmError:
    return WfmError(f"the bundle is invalid: {message}", code="WFM_BUNDLE_INVALID")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
