"""Hypothesis fuzzing of the two parsers that read hostile bytes: desired state and tarballs.

Desired state: byte-level mutations of a valid document, hostile YAML spliced into it, and
random structures, each in a file beside the corpus's good deployments. Whatever the
input, the parser returns coded failures located in that file, and the good deployments
come out identical and untouched by the plan (tests/test_desired_properties.py covers
arbitrary input alone). Tarballs: random member lists (every kind of member, names and
link targets built from `..`, `/`, `.` and a path outside) and byte-level mutations of a
good tarball. Extraction either refuses with a package code or leaves a tree whose every
entry is a plain file, folder or link resolving inside; nothing is ever written outside.

Bounded for CI: every test stops at a few hundred examples with no deadline, derandomized
(tests/support/hypo.py). For a long random hunt, HYPOTHESIS_PROFILE=hunt (and
MARGO_LITE_FUZZ_SCALE=N for N times more).
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import stat
import tarfile
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from margo_lite import archive, desired, planner
from margo_lite.errors import DESIRED_STATE_CODES, DesiredStateError, PackageError
from tests.corpus import corpus
from tests.support import plans
from tests.support.hypo import examples
from tests.test_planner import run

SETTINGS = settings(
    max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SLOWER = settings(
    max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

GOOD = corpus.good_files()
GOOD_STATE = desired.parse_files(GOOD)
INSTALLED = run(planner.plan(GOOD_STATE, {}), {})
VALID = (
    (corpus.DESIRED / "good" / "deployment.yaml")
    .read_bytes()
    .replace(b"id: corpus-good\n", b"id: fuzzed\n")
)
(VALID_DIGEST,) = [
    d.digest for d in desired.parse_files({**GOOD, "v.yaml": VALID}).deployments if d.id == "fuzzed"
]
PACKAGE_CODES = {"UNSAFE_ARCHIVE", "PACKAGE_TOO_LARGE", "PACKAGE_INVALID"}


# --- desired state ----------------------------------------------------------------------------


def check_beside_good(path: str, data: bytes) -> desired.DesiredState:
    """Parse `data` at `path` with the good deployments: they must not notice it."""
    state = desired.parse_files({**GOOD, path: data})
    event(" ".join(sorted({f.error.code for f in state.failures})) or "parsed")
    for failure in state.failures:
        assert isinstance(failure.error, DesiredStateError)
        assert failure.error.code in DESIRED_STATE_CODES
        assert failure.source.startswith(path), failure
    good = [d for d in state.deployments if d.id in INSTALLED]
    assert good == list(GOOD_STATE.deployments)
    p = planner.plan(state, INSTALLED)
    for dep_id in INSTALLED:
        dp = plans.find(p, dep_id)
        assert dp is not None and dp.failure is None and dp.changes == () and not dp.held
    return state


#: Mutations that keep the text YAML-like, so they reach the parser and not only the reader.
YAMLISH = [
    b":",
    b" ",
    b"-",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\n",
    b"  ",
    b"#",
    b"'",
    b'"',
    b",",
    b"a",
    b"1",
]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few bytes replaced, inserted or deleted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        chunk = draw(st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from(YAMLISH)))
        if action == "insert" or at == len(data):
            data[at:at] = chunk
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            del data[at : at + len(chunk)]
    return bytes(data)


#: Fragments that have broken YAML loaders: aliases, anchors, tags, merges, deep brackets.
HOSTILE = [
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!python/object:os.system ",
    b"!!binary ",
    b"!!set ",
    b"? ",
    b"[" * 100,
    b"{" * 100,
    b"- " * 100,
    b"%YAML 1.1\n---\n",
    b"\n---\n",
    b"\n...\n",
    b"\t",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"'",
    b'"\\u0000"',
    b": ",
    b"~",
    b"0x1F ",
    b".nan ",
    b"2001-12-14t21:59:43.10-05:00 ",
]


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """A valid document with hostile fragments inserted at line starts or after colons."""
    data = VALID
    cuts = [0] + [i + 1 for i, b in enumerate(data) if b in b"\n:"]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.sampled_from(cuts))
        at = min(at, len(data))
        data = data[:at] + draw(st.sampled_from(HOSTILE)) + data[at:]
    return data


@SETTINGS
@given(mutated(VALID))
def test_byte_mutations_of_a_valid_document_never_disturb_others(data):
    check_beside_good("fuzz/deployment.yaml", data)


@SETTINGS
@given(spliced())
def test_hostile_fragments_never_disturb_others(data):
    check_beside_good("fuzz/deployment.yaml", data)


yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=10),
        st.sampled_from(["fuzzed", "docker-compose", "ENV.X", "web", "good/app"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["apiVersion", "kind", "metadata", "spec", "id", "name", "x"]),
            children,
            max_size=4,
        ),
    ),
    max_leaves=25,
)


@SETTINGS
@given(yaml_values, st.sampled_from(["a.yaml", "good/x.yml", "zzz.yaml"]))
def test_random_structures_in_any_file_never_disturb_others(value, path):
    """In files sorting before, beside and after the good deployments."""
    document = {"apiVersion": desired.API_VERSIONS[0], "kind": desired.KIND, "x": value}
    check_beside_good(path, yaml.safe_dump(document).encode())
    check_beside_good(path, yaml.safe_dump(value).encode())


@SETTINGS
@given(st.booleans(), st.sampled_from([None, True]), st.integers(20, 200), st.sampled_from([2, 4]))
def test_the_digest_ignores_formatting(sort_keys, flow, width, indent):
    """Key order, flow or block style, line width: the same deployment, the same digest."""
    text = yaml.safe_dump(
        yaml.safe_load(VALID),
        sort_keys=sort_keys,
        default_flow_style=flow,
        width=width,
        indent=indent,
    )
    state = check_beside_good("fuzz/d.yaml", text.encode())
    assert [d.digest for d in state.deployments if d.id == "fuzzed"] == [VALID_DIGEST]


# --- tarballs ---------------------------------------------------------------------------------

SEGMENTS = ["a", "b", "c", "compose.yaml", ".", "..", "outside", "OUT"]
TAME_SEGMENTS = ["a", "b", "c", "compose.yaml", ".", "outside", "OUT"]
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]
HOSTILE_KINDS = [*KINDS, tarfile.FIFOTYPE, tarfile.CHRTYPE]


@st.composite
def paths(draw: st.DrawFn, tame: bool = False) -> str:
    """Relative or absolute, with `.`, `..`, doubled and trailing slashes; `tame`: no `..`,
    never absolute (so that half the archives get past the names and test the rest)."""
    parts = draw(st.lists(st.sampled_from(TAME_SEGMENTS if tame else SEGMENTS), max_size=3))
    path = draw(st.sampled_from(["/", "//"])).join(parts or ["a"])
    if draw(st.integers(0, 9)) == 0:
        path += "/"
    return ("/" if not tame and draw(st.integers(0, 5)) == 0 else "") + path


@st.composite
def members(draw: st.DrawFn) -> list[tuple[str, bytes, str, bytes]]:
    """(name, type, link target, content) of up to 6 members; link targets are never tame."""
    tame = draw(st.booleans())
    found = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(KINDS if tame else HOSTILE_KINDS))
        link = draw(paths()) if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        found.append((draw(paths(tame)), kind, link, draw(st.binary(max_size=8))))
    return found


def make_tarball(entries: list[tuple[str, bytes, str, bytes]], outside: Path, how: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=how, format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, content in entries:
            info = tarfile.TarInfo(name.replace("OUT", str(outside).lstrip("/")))
            info.type = kind
            info.linkname = link.replace("OUT", str(outside).lstrip("/"))
            info.mode = 0o755 if content[:1] == b"x" else 0o644
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(content) if info.size else None)
    return out.getvalue()


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.lstat().st_mode) for p in root.rglob("*"))


def extract_and_check(data: bytes, work: Path) -> bool:
    """Extract `data` into `work/dest`; check the invariants; True when it was accepted."""
    dest = work / "dest"
    dest.mkdir()
    outside = work / "outside"
    before = snapshot(outside)
    limits = archive.Limits(max_bytes=1 << 16, max_entries=64)
    try:
        archive.extract(io.BytesIO(data), dest, limits)
        accepted = True
    except PackageError as exc:
        assert exc.code in PACKAGE_CODES, exc
        accepted = False
        event(exc.code)
    assert snapshot(outside) == before
    assert sorted(p.name for p in work.iterdir()) == ["dest", "outside"]
    if accepted:
        event("accepted")
        top = os.path.realpath(dest)
        for path in dest.rglob("*"):
            mode = path.lstat().st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), path
            if stat.S_ISLNK(mode):
                resolved = os.path.realpath(path)
                assert resolved == top or resolved.startswith(top + os.sep), path
        archive.tree_digest(dest)  # reads every entry it accepted
    return accepted


def workspace() -> tempfile.TemporaryDirectory:
    """A fresh folder per example (pytest's tmp_path is one per test, not per example)."""
    return tempfile.TemporaryDirectory(prefix="margo-fuzz-")


def prepared_work(root: str) -> Path:
    work = Path(root)
    (work / "outside").mkdir()
    (work / "outside" / "keep").write_bytes(b"untouched")
    return work


@SLOWER
@given(members(), st.sampled_from(["w", "w:gz"]))
def test_random_member_lists_never_escape(entries, how):
    with workspace() as root:
        work = prepared_work(root)
        data = make_tarball(entries, work / "outside", how)
        accepted = extract_and_check(data, work)
        if accepted:  # every regular file is there with what the archive said
            for name, kind, _link, content in entries:
                name = name.replace("OUT", str(work / "outside").lstrip("/"))
                if kind == tarfile.REGTYPE and not name.endswith("/"):
                    path = work / "dest" / archive.member_path(name)
                    assert path.read_bytes() == content


GOOD_TARBALL = make_tarball(
    [
        ("compose.yaml", tarfile.REGTYPE, "", corpus.GOOD_COMPOSE),
        ("conf", tarfile.DIRTYPE, "", b""),
        ("conf/app.ini", tarfile.REGTYPE, "", b"x=1\n"),
        ("conf/link", tarfile.SYMTYPE, "app.ini", b""),
    ],
    Path("/nonexistent"),
    "w",
)


@SLOWER
@given(mutated(GOOD_TARBALL), st.booleans())
def test_byte_mutations_of_a_good_tarball_are_refused_or_safe(data, compress):
    with workspace() as root:
        extract_and_check(gzip.compress(data, mtime=0) if compress else data, prepared_work(root))


@SLOWER
@given(mutated(gzip.compress(GOOD_TARBALL, mtime=0)))
def test_byte_mutations_of_the_compressed_stream_are_refused_or_safe(data):
    with workspace() as root:
        extract_and_check(data, prepared_work(root))


@SETTINGS
@given(paths(), paths())
def test_a_link_read_as_inside_stays_inside_when_normalised(path, target):
    """The lexical link check is never looser than normalising the joined path."""
    try:
        name = archive.member_path(path)
    except PackageError:
        return
    assume(name)
    inside = archive._link_stays_inside(name, target)
    event("inside" if inside else "outside")
    if inside:
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        assert not joined.startswith("/") and joined != ".." and not joined.startswith("../")
