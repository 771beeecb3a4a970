"""OCI compose packages, the pure part: `oci://` references, manifests and what to pull.

A component's `repository: oci://host[:port]/path` with its `revision` names an artifact
in an OCI distribution registry. margo-lite reads two forms of it: a Compose OCI artifact
as `docker compose publish` writes it (compose files and env files as layers, each named
by an annotation), and an image manifest with one tar+gzip layer holding the package
folder. Everything here is pure (bytes in, plans out); `ocipull` talks to the registry.
An artifact has one main compose file (files it `extends:` may ride along, marked so):
margo-lite runs one compose file, so an artifact of several to merge (`-f a -f b`, or
`--resolve-image-digests`) is refused rather than run without its overrides.

Manifests, indexes and annotations come from a registry margo-lite does not control:
digests must be sha256 over the exact bytes, sizes are bounded, JSON with duplicate keys
is refused (two readers could see two documents), and annotated file names must be plain
names, each used once, so no layer can write outside the package folder or over another.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping

from margo_lite import jsonvalue, logs
from margo_lite.errors import OciError
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEME = "oci://"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

COMPOSE_PROJECT = "application/vnd.docker.compose.project"  # artifactType (OCI 1.1)
COMPOSE_EMPTY_CONFIG = "application/vnd.docker.compose.config.empty.v1+json"  # OCI 1.0 form
COMPOSE_FILE = "application/vnd.docker.compose.file+yaml"
ENV_FILE = "application/vnd.docker.compose.envfile"
FILE_ANNOTATIONS = {COMPOSE_FILE: "com.docker.compose.file", ENV_FILE: "com.docker.compose.envfile"}
TAR_GZIP = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)

MAX_MANIFEST = 4 << 20  # what registries accept; the distribution spec's suggested bound
MAX_FILE_LAYER = 1 << 20  # one compose file or env file
MAX_LAYERS = 64
_NAME = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_COMPOSE_NAME = re.compile(r"(?:docker-)?compose\.ya?ml")  # what the package store looks for


@dataclass(frozen=True)
class Reference:
    """Where an artifact is: registry host (with port), repository name, tag or digest."""

    host: str
    name: str
    tag: str | None
    digest: str | None
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def revision(self) -> str:
        return self.digest or self.tag or ""

    @property
    def shown(self) -> str:
        """Safe to log: no credentials."""
        sep = "@" if self.digest else ":"
        return f"{SCHEME}{self.host}/{self.name}{sep}{self.revision}"

    def url(self, kind: str, ref: str) -> str:
        """https URL of a manifest or blob, credentials in it (the downloader sends them)."""
        auth = ""
        if self.user is not None:
            auth = urllib.parse.quote(self.user, safe="")
            auth += ":" + urllib.parse.quote(self.password or "", safe="") + "@"
        return f"https://{auth}{self.host}/v2/{self.name}/{kind}/{ref}"


def is_location(location: str) -> bool:
    return location[:6].lower() == SCHEME


def location(repository: str, revision: str) -> str:
    """The one-string package location of `repository` + `revision` (a tag or a digest):
    what a document's component turns into, for `PackageStore.prepare`."""
    repository, revision = repository.strip().rstrip("/"), str(revision).strip()
    sep = "@" if ":" in revision else ":"
    parse_repository(repository)
    joined = f"{repository}{sep}{revision}"
    parse(joined)
    return joined


def parse_repository(repository: str) -> tuple[str, str]:
    host, name, rest = _split(repository)
    if rest:
        raise invalid_reference(repository, "a repository names no tag or digest itself")
    return host, name


def parse(location: str) -> Reference:
    """The reference a location names; OCI_REFERENCE_INVALID if it is not one."""
    host, name, rest = _split(location)
    tag = digest = None
    if rest.startswith("@"):
        digest = check_digest(rest[1:], f"{logs.sanitize_url(location)}: revision")
    elif rest.startswith(":") and _TAG.fullmatch(rest[1:]):
        tag = rest[1:]
    else:
        raise invalid_reference(location, "needs a tag (`:1.2.0`) or a digest (`@sha256:...`)")
    parts = urllib.parse.urlsplit(location)
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password or "") if user is not None else None
    logs.register_secret(password)
    return Reference(host, name, tag, digest, user, password)


def _split(location: str) -> tuple[str, str, str]:
    """(host[:port], repository name, ":tag" / "@digest" / "")."""
    if not is_location(location) or any(c in location for c in "?#\\ \t\r\n\x00"):
        raise invalid_reference(location, "not an oci://host[:port]/path reference")
    try:
        parts = urllib.parse.urlsplit(location)
        port = parts.port
    except ValueError:
        raise invalid_reference(location, "bad host or port") from None
    host = (parts.hostname or "").lower()
    if not host or not re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", host):
        raise invalid_reference(location, "no registry host")
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path.lstrip("/")
    last = path.rfind("/") + 1
    cut = min((i for i in (path.find("@", last), path.find(":", last)) if i >= 0), default=-1)
    name, rest = (path, "") if cut < 0 else (path[:cut], path[cut:])
    if len(name) > 255 or not _NAME.fullmatch(name):
        raise invalid_reference(location, "the repository path is not a valid OCI name")
    return netloc, name, rest


def check_digest(value: Any, where: str) -> str:
    """A sha256 digest as given; OCI_DIGEST_UNSUPPORTED for another algorithm."""
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value
    algorithm = value.split(":", 1)[0] if isinstance(value, str) and ":" in value else ""
    if _ALGORITHM.fullmatch(algorithm) and algorithm != "sha256":
        raise OciError(
            f"{where}: digest algorithm {algorithm[:32]!r} is not supported (sha256 only)",
            code="OCI_DIGEST_UNSUPPORTED",
        )
    raise invalid_manifest(f"{where}: {str(value)[:80]!r} is not a sha256 digest")


def invalid_reference(location: str, why: str) -> OciError:
    shown = logs.sanitize_url(location) if "://" in location else location
    return OciError(f"{shown[:200]!r}: {why}", code="OCI_REFERENCE_INVALID")


def invalid_manifest(message: str) -> OciError:
    return OciError(message, code="OCI_MANIFEST_INVALID")


# --- manifests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]
    artifact_type: str = ""


@dataclass(frozen=True)
class Plan:
    """What to fetch: compose artifact layers with their file names, or one tar layer."""

    kind: str  # "compose" or "tar"
    layers: tuple[tuple[Descriptor, str], ...]  # (layer, file name; "" for the tar layer)


def read_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, refusing duplicate keys; OCI_MANIFEST_INVALID if not."""

    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=jsonvalue.unique_object)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid_manifest(f"{what}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(document, dict):
        raise invalid_manifest(f"{what}: not a JSON object")
    return document


def kind_of(document: Mapping[str, Any], content_type: str, what: str) -> str:
    """ "index" or "manifest", from the document's mediaType and the answer's Content-Type."""
    declared = document.get("mediaType")
    served = content_type.split(";", 1)[0].strip().lower()
    if declared is not None and served and served in ACCEPT and served != declared:
        raise invalid_manifest(f"{what}: served as {served} but says it is {declared}")
    media = declared or (served if served in ACCEPT else "")
    if document.get("schemaVersion") != 2:
        raise invalid_manifest(f"{what}: schemaVersion is not 2")
    if media in INDEX_TYPES or (not media and "manifests" in document):
        return "index"
    if media in MANIFEST_TYPES or (not media and "layers" in document):
        return "manifest"
    raise invalid_manifest(f"{what}: media type {str(media)[:80]!r} is not an OCI manifest")


def descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise invalid_manifest(f"{where}: not a descriptor object")
    media, size, notes = raw.get("mediaType"), raw.get("size"), raw.get("annotations", {})
    if not isinstance(media, str) or not media:
        raise invalid_manifest(f"{where}: no mediaType")
    if type(size) is not int or size < 0:
        raise invalid_manifest(f"{where}: size is not a non-negative integer")
    if not isinstance(notes, dict) or not all(isinstance(v, str) for v in notes.values()):
        raise invalid_manifest(f"{where}: annotations are not strings")
    artifact = raw.get("artifactType", "")
    return Descriptor(
        media[:200],
        check_digest(raw.get("digest"), where),
        size,
        notes,
        artifact if isinstance(artifact, str) else "",
    )


def choose(index: Mapping[str, Any], what: str) -> Descriptor:
    """The manifest of an index to pull: the Compose artifact's, else the only one."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_LAYERS:
        raise invalid_manifest(f"{what}: an index without a usable list of manifests")
    found = [descriptor(e, f"{what}: manifests[{i}]") for i, e in enumerate(entries)]
    compose = [d for d in found if d.artifact_type == COMPOSE_PROJECT]
    picked = compose[:1] or (found if len(found) == 1 else [])
    if not picked or picked[0].media_type not in MANIFEST_TYPES:
        raise invalid_manifest(f"{what}: the index names no Compose artifact manifest")
    return picked[0]


def plan(manifest: Mapping[str, Any], what: str, max_size: int) -> Plan:
    """What to fetch for a manifest, every layer and name checked before any blob is."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS:
        raise invalid_manifest(f"{what}: needs 1 to {MAX_LAYERS} layers")
    found = [descriptor(layer, f"{what}: layers[{i}]") for i, layer in enumerate(layers)]
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    if manifest.get("artifactType") == COMPOSE_PROJECT or config_type in (
        COMPOSE_EMPTY_CONFIG,
        COMPOSE_PROJECT,
    ):
        return Plan("compose", _compose_layers(found, what, max_size))
    if len(found) == 1 and found[0].media_type in TAR_GZIP:
        if found[0].size > max_size:
            raise _too_large(f"{what}: the package layer is {found[0].size} bytes", max_size)
        return Plan("tar", ((found[0], ""),))
    raise invalid_manifest(
        f"{what}: neither a Compose OCI artifact nor one tar+gzip layer holding the package"
    )


def _compose_layers(
    found: list[Descriptor], what: str, max_size: int
) -> tuple[tuple[Descriptor, str], ...]:
    named: list[tuple[Descriptor, str]] = []
    seen: set[str] = set()
    for i, layer in enumerate(found):
        where = f"{what}: layers[{i}]"
        key = FILE_ANNOTATIONS.get(layer.media_type)
        if key is None:
            raise invalid_manifest(
                f"{where}: media type {layer.media_type!r} in a Compose artifact"
            )
        name = file_name(layer.annotations.get(key), where, env=layer.media_type == ENV_FILE)
        if name in seen:
            raise invalid_manifest(f"{where}: file name {name!r} is used twice")
        if layer.size > MAX_FILE_LAYER:
            raise _too_large(f"{where}: {name} is {layer.size} bytes", MAX_FILE_LAYER)
        seen.add(name)
        named.append((layer, name))
    main = [n for layer, n in named if layer.media_type == COMPOSE_FILE and not _extends(layer)]
    if len(main) != 1:
        raise invalid_manifest(
            f"{what}: {len(main)} compose files to merge ({', '.join(main)[:120]}); "
            "margo-lite runs one: publish a single compose file"
        )
    for layer, name in named:
        if name != main[0] and _COMPOSE_NAME.fullmatch(name):
            raise invalid_manifest(
                f"{what}: only the main compose file may be named {name!r}, not an "
                f"{'extends file' if layer.media_type == COMPOSE_FILE else 'env file'}"
            )
    total = sum(layer.size for layer, _ in named)
    if total > max_size:
        raise _too_large(f"{what}: the layers are {total} bytes", max_size)
    return tuple(named)


def _extends(layer: Descriptor) -> bool:
    """A file the main compose file `extends:` (published beside it), not one to merge."""
    return layer.annotations.get("com.docker.compose.extends") == "true"


def file_name(value: Any, where: str, *, env: bool) -> str:
    """A plain file name from an annotation: no folders, no `.`/`..`, no control characters;
    only env files (`.env`) may start with a dot."""
    if not isinstance(value, str) or not value:
        raise invalid_manifest(f"{where}: no file name annotation")
    bad = (
        value in (".", "..")
        or any(c in value for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or len(value.encode("utf-8", "surrogatepass")) > 255
        or (value.startswith(".") and not env)
        or value != value.strip()
    )  # fmt: skip
    if bad:
        raise invalid_manifest(f"{where}: {value[:80]!r} is not a plain file name")
    return value


def _too_large(message: str, limit: int) -> OciError:
    return OciError(f"{message}, more than the limit of {limit}", code="PACKAGE_TOO_LARGE")
