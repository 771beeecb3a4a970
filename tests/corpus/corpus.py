"""The hostile-input corpus: its manifest, the generated cases, and the desired-state tree.

`manifest.yaml` lists every case; stored files live beside it, and cases that would be
megabytes or binary on disk (huge files, bombs, junk, tarballs) are built here at test
time from their manifest entry, deterministically. `python -m tests.corpus.corpus DEST`
writes every desired-state case plus the good deployments into DEST, ready to be the
desired-state folder of one `margo-lite once`.
"""

from __future__ import annotations

import gzip
import io
import random
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DESIRED = HERE / "desired"
COMPOSE = HERE / "compose"
KINDS = ("desired-state", "package", "signature", "compose", "policy", "canonical")
#: Keys a case of each kind may have besides the common ones; anything else is a typo.
KIND_KEYS = {
    "desired-state": {"generate", "field", "says"},
    "package": {"tar", "generate", "raw", "config", "says"},
    "signature": {"tar", "generate", "raw", "signature", "folder", "says"},
    "compose": {"key", "says"},
    "policy": {"policy", "rule", "says"},
    "canonical": {"parameters", "rule", "says"},
}
COMMON_KEYS = {"name", "kind", "code", "why", "files", "ids", "stage", "also"}
#: The compose file of every package case that is not about the compose file itself.
GOOD_COMPOSE = b"services:\n  web:\n    image: localhost/testimg:1\n"


@dataclass(frozen=True)
class Case:
    """One manifest entry; `spec` keeps the kind-specific keys (tar, signature, policy...)."""

    name: str
    kind: str
    code: str
    why: str
    files: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    stage: str = "parse"
    also: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


MANIFEST = yaml.safe_load((HERE / "manifest.yaml").read_bytes())
#: The good deployments' files, below DESIRED.
GOOD_PATHS: tuple[str, ...] = tuple(MANIFEST["good"])


def load_manifest() -> list[Case]:
    """Every case, its keys checked: a misspelt key must fail, not quietly weaken a case."""
    cases = []
    for entry in MANIFEST["cases"]:
        name = entry.get("name")
        if entry.get("kind") not in KINDS:
            raise ValueError(f"case {name}: unknown kind {entry.get('kind')!r}")
        unknown = set(entry) - COMMON_KEYS - KIND_KEYS[entry["kind"]]
        missing = {"name", "code", "why"} - set(entry)
        if unknown or missing:
            raise ValueError(f"case {name}: unknown keys {unknown or ''} missing {missing or ''}")
        if entry.get("stage", "parse") not in ("parse", "plan"):
            raise ValueError(f"case {name}: unknown stage {entry['stage']!r}")
        if entry["kind"] in ("desired-state", "compose", "policy", "canonical") and not (
            entry.get("files") or entry.get("generate")
        ):
            raise ValueError(f"case {name}: no files")
        cases.append(
            Case(
                name=entry["name"],
                kind=entry["kind"],
                code=entry["code"],
                why=entry["why"],
                files=tuple(entry.get("files", ())),
                ids=tuple(entry.get("ids", ())),
                stage=entry.get("stage", "parse"),
                also=tuple(entry.get("also", ())),
                spec={k: v for k, v in entry.items() if k not in COMMON_KEYS},
            )
        )
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names repeat")
    return cases


def cases_of(kind: str) -> list[Case]:
    return [c for c in load_manifest() if c.kind == kind]


# --- desired-state cases ------------------------------------------------------------------


def desired_files(case: Case) -> dict[str, bytes]:
    """The case's files, keyed by their path in the desired-state folder (`<case>/...`)."""
    files = {path: (DESIRED / path).read_bytes() for path in case.files}
    generate = case.spec.get("generate")
    if generate:
        args = {k: v for k, v in generate.items() if k not in ("function", "path")}
        files[generate["path"]] = GENERATORS[generate["function"]](**args)
    return files


def good_files() -> dict[str, bytes]:
    """The good deployments (one sorts before most cases, one after all of them)."""
    return {path: (DESIRED / path).read_bytes() for path in GOOD_PATHS}


def desired_tree() -> dict[str, bytes]:
    """Every desired-state and canonical case and the good deployments, as one folder."""
    tree = good_files()
    for case in cases_of("desired-state"):
        tree.update(desired_files(case))
    for case in cases_of("canonical"):
        tree.update(canonical_files(case))
    return tree


def canonical_files(case: Case) -> dict[str, bytes]:
    """A canonical case as a deployment `corpus-<name>` of the in-repository package
    `<name>/app` (its compose file), with the case's parameters."""
    (path,) = case.files
    parameters = {
        f"p{index}": {"value": value, "targets": [{"pointer": pointer, "components": ["web"]}]}
        for index, (pointer, value) in enumerate((case.spec.get("parameters") or {}).items())
    }
    document = {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {
            "annotations": {"id": f"corpus-{case.name}", "applicationId": "corpus-app"},
            "name": f"corpus-{case.name}",
            "namespace": "margo-corpus",
        },
        "spec": {
            "deploymentProfile": {
                "type": "docker-compose",
                "components": [
                    {"name": "web", "properties": {"packageLocation": f"{case.name}/app"}}
                ],
            },
            "parameters": parameters,
        },
    }
    return {
        f"{case.name}/app/compose.yaml": (COMPOSE / path).read_bytes(),
        f"{case.name}/deployment.yaml": yaml.safe_dump(document).encode(),
    }


def write_tree(dest: Path) -> None:
    for path, data in desired_tree().items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# --- generators: big, binary or bomb-like inputs, built on demand -------------------------


def huge_yaml(size: int) -> bytes:
    """A valid-looking deployment padded with a comment to exactly `size` bytes."""
    head = b"apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n# "
    return head + b"x" * (size - len(head) - 1) + b"\n"


def deep_flow(depth: int) -> bytes:
    """`[[[...]]]`: the recursive parser's stack is the target."""
    return b"spec: " + b"[" * depth + b"]" * depth + b"\n"


def deep_block(depth: int) -> bytes:
    """Nested block mappings, `depth` levels, each indented one more step."""
    lines = [b"  " * i + b"k%d:" % i for i in range(depth)]
    return b"\n".join(lines) + b" leaf\n"


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def many_documents(count: int) -> bytes:
    return b"".join(b"--- {n: %d}\n" % i for i in range(count))


def gzip_of(text: str) -> bytes:
    """Gzip bytes with a fixed mtime, so the case is the same in every run."""
    return gzip.compress(text.encode(), mtime=0)


def repeated(text: str, count: int) -> bytes:
    return text.encode() * count


def entries_bomb(count: int) -> bytes:
    """A compose file plus `count` empty folders: tiny compressed, too many entries.

    Folders rather than files: the extractor syncs each file, which would make the case slow.
    """
    members = [{"name": f"e{i}", "type": "dir"} for i in range(count)]
    return build_tar({"members": members, "compression": "gz"}, Path("/nonexistent"))


def zeros_bomb(size: int) -> bytes:
    """A gzip tarball whose one member holds `size` zero bytes (about 1000:1)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("compose.yaml")
        info.size = len(GOOD_COMPOSE)
        tar.addfile(info, io.BytesIO(GOOD_COMPOSE))
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, _Zeros(size))
    return out.getvalue()


def lying_size(size: int) -> bytes:
    """A plain tar header that claims `size` bytes, followed by no data at all."""
    info = tarfile.TarInfo("zeros")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    compose = tarfile.TarInfo("compose.yaml")
    compose.size = len(GOOD_COMPOSE)
    padded = GOOD_COMPOSE + b"\0" * (-len(GOOD_COMPOSE) % 512)
    return gzip.compress(compose.tobuf(format=tarfile.GNU_FORMAT) + padded + header, mtime=0)


def pax_bomb(size: int) -> bytes:
    """A member with no content but a pax header of `size` bytes (it counts in no file)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("compose.yaml")
        info.pax_headers = {"comment": "x" * size}
        tar.addfile(info, io.BytesIO(b""))
    return out.getvalue()


class _Zeros(io.RawIOBase):
    """`size` zero bytes without holding them in memory."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return b"\0" * n


GENERATORS: dict[str, Callable[..., bytes]] = {
    "huge_yaml": huge_yaml,
    "deep_flow": deep_flow,
    "deep_block": deep_block,
    "random_bytes": random_bytes,
    "many_documents": many_documents,
    "gzip_of": gzip_of,
    "repeated": repeated,
    "entries_bomb": entries_bomb,
    "zeros_bomb": zeros_bomb,
    "lying_size": lying_size,
    "pax_bomb": pax_bomb,
}


# --- tarballs from a declarative member list ----------------------------------------------

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "contiguous": tarfile.CONTTYPE,
}


def build_tar(spec: dict[str, Any], outside: Path) -> bytes:
    """A tarball of `spec["members"]`; `{outside}` in names and link targets becomes `outside`.

    A good compose.yaml comes first unless `compose` is false. Member keys: name, type
    (file, dir, symlink, hardlink, chr, blk, fifo, contiguous),
    data (text), link, mode, pax (extra pax headers). `compression`: gz, bz2, xz or none;
    `format`: pax, gnu or ustar.
    """
    compression = spec.get("compression", "gz")
    mode = "w" if compression == "none" else f"w:{compression}"
    formats = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=formats[spec.get("format", "pax")]) as tar:
        members = list(spec["members"])
        if spec.get("compose", True):
            members.insert(0, {"name": "compose.yaml", "data": GOOD_COMPOSE.decode()})
        for m in members:
            info = tarfile.TarInfo(m["name"].replace("{outside}", str(outside)))
            info.type = _TYPES[m.get("type", "file")]
            info.linkname = m.get("link", "").replace("{outside}", str(outside))
            info.mode = m.get("mode", 0o644)
            info.mtime = 0
            if m.get("pax"):
                info.pax_headers = {
                    k: str(v).replace("{outside}", str(outside)) for k, v in m["pax"].items()
                }
            data = m.get("data", "").encode()
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def package_bytes(case: Case, outside: Path) -> bytes:
    """The raw package of a package or signature case."""
    if "tar" in case.spec:
        return build_tar(case.spec["tar"], outside)
    generate = case.spec.get("generate")
    if generate:
        args = {k: v for k, v in generate.items() if k != "function"}
        return GENERATORS[generate["function"]](**args)
    if "raw" in case.spec:
        return case.spec["raw"].encode("latin-1")
    return build_tar(
        {"members": [{"name": "compose.yaml", "data": GOOD_COMPOSE.decode()}]}, outside
    )


def compose_document(case: Case) -> Any:
    (path,) = case.files
    return yaml.safe_load((COMPOSE / path).read_bytes())


def iter_files(root: Path) -> Iterator[str]:
    """Paths of the files below `root`, relative and sorted."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.corpus.corpus DEST")
    write_tree(Path(sys.argv[1]))
