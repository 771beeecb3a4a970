"""Safe extraction: each hostile archive is refused with its code and writes nothing outside.

The archives are built with tarfile (which writes whatever it is told), then handed to the
store as a download from the HTTPS test server or as a tarball in the repository.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from margo_lite import archive
from margo_lite.errors import PackageError
from tests.support.pkgfixtures import (  # noqa: F401 (fixtures)
    cache_leftovers,
    make_store,
    make_tar,
    member,
    server,
    test_ca,
)
from tests.support.pkgserver import read_tree

COMPOSE = ("compose.yaml", b"services:\n  web:\n    image: localhost/testimg:1\n")
SYM, LNK, CHR, BLK, FIFO, DIR = (
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
    tarfile.DIRTYPE,
)


def hostile_archives(outside: Path) -> dict[str, tuple[list, str]]:
    """name -> (entries, expected code); `outside` is a folder the archive aims at."""
    return {
        "absolute path": ([COMPOSE, (f"{outside}/pwned", b"x")], "UNSAFE_ARCHIVE"),
        "dot-dot path": ([COMPOSE, ("../outside/pwned", b"x")], "UNSAFE_ARCHIVE"),
        "dot-dot inside a path": ([COMPOSE, ("a/../../outside/p", b"x")], "UNSAFE_ARCHIVE"),
        "absolute symlink": ([COMPOSE, member("l", SYM, linkname=str(outside))], "UNSAFE_ARCHIVE"),
        "escaping symlink": ([COMPOSE, member("a/l", SYM, linkname="../../x")], "UNSAFE_ARCHIVE"),
        "write through a symlink": (
            [COMPOSE, member("d", DIR), member("l", SYM, linkname="d"), ("l/f", b"x")],
            "UNSAFE_ARCHIVE",
        ),
        "symlink chain": (
            # each link alone stays inside; followed together they leave the package
            [
                COMPOSE,
                member("d", DIR),
                member("d/up", SYM, linkname=".."),
                member("l1", SYM, linkname="d"),
                member("p", SYM, linkname="l1/up/.."),
            ],
            "UNSAFE_ARCHIVE",
        ),
        "hard link outside": (
            [COMPOSE, member("h", LNK, linkname="/etc/passwd")],
            "UNSAFE_ARCHIVE",
        ),
        "hard link dot-dot": ([COMPOSE, member("h", LNK, linkname="../x")], "UNSAFE_ARCHIVE"),
        "hard link to a symlink": (
            [COMPOSE, member("l", SYM, linkname="compose.yaml"), member("h", LNK, linkname="l")],
            "UNSAFE_ARCHIVE",
        ),
        "character device": ([COMPOSE, member("null", CHR)], "UNSAFE_ARCHIVE"),
        "block device": ([COMPOSE, member("sda", BLK)], "UNSAFE_ARCHIVE"),
        "FIFO": ([COMPOSE, member("pipe", FIFO)], "UNSAFE_ARCHIVE"),
        "file twice": ([COMPOSE, COMPOSE], "UNSAFE_ARCHIVE"),
        "file replaced by a link": (
            [COMPOSE, member("compose.yaml", SYM, linkname="x")],
            "UNSAFE_ARCHIVE",
        ),
        "name too long": ([COMPOSE, ("n" * 300, b"x")], "PACKAGE_INVALID"),
        "size bomb": ([COMPOSE, ("zeros", b"\0" * (3 << 20))], "PACKAGE_TOO_LARGE"),
    }


CASES = list(hostile_archives(Path("/OUTSIDE")))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("via", ["server", "repository"])
def test_hostile_archive_is_refused_and_nothing_is_written_outside(
    case, via, server, make_store, tmp_path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    entries, code = hostile_archives(outside)[case]
    tarball = make_tar(entries)
    store = make_store(max_size=1 << 20)
    with pytest.raises(PackageError) as caught:
        if via == "server":
            store.prepare(server.put("/evil.tar.gz", tarball), None, {})
        else:
            store.prepare("evil.tar.gz", None, {"evil.tar.gz": tarball})
    assert caught.value.code == code, caught.value
    assert list(outside.iterdir()) == []
    assert cache_leftovers(tmp_path / "cache") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "outside"]


def test_entry_count_bomb_is_refused(tmp_path):
    tarball = make_tar([COMPOSE] + [(f"f{i}", b"") for i in range(60)])
    with pytest.raises(PackageError) as caught:
        archive.extract(io.BytesIO(tarball), tmp_path, archive.Limits(max_entries=50))
    assert caught.value.code == "PACKAGE_TOO_LARGE"


def test_header_bomb_is_stopped_by_the_decompressed_stream_limit(tmp_path):
    """A giant pax header is no file at all; the limit on the decompressed stream stops it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("compose.yaml")
        info.pax_headers = {"comment": "x" * (4 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    assert len(out.getvalue()) < 100_000
    limits = archive.Limits(max_bytes=1 << 20, max_entries=10)
    with pytest.raises(PackageError) as caught:
        archive.extract(io.BytesIO(out.getvalue()), tmp_path, limits)
    assert caught.value.code == "PACKAGE_TOO_LARGE"


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b" + b"not really gzip" * 40,
        gzip.compress(b"plain text, not a tar archive\n" * 40)[:-30],
        make_tar([COMPOSE], gzip=False)[:700],
    ],
    ids=["bad gzip", "truncated gzip", "truncated tar"],
)
def test_broken_archives_are_invalid(make_store, data):
    with pytest.raises(PackageError) as caught:
        make_store().prepare("p.tar.gz", None, {"p.tar.gz": data})
    assert caught.value.code in ("PACKAGE_INVALID", "UNSAFE_ARCHIVE")


def test_a_tidy_archive_keeps_links_inside_modes_and_folders(server, make_store):
    script = tarfile.TarInfo("bin/start.sh")
    script.size, script.mode = 3, 0o4755  # setuid is dropped, the executable bit stays
    entries = [
        ("./compose.yaml", COMPOSE[1]),
        member("conf", DIR),
        ("conf/app.ini", b"a=1\n"),
        member("conf/current.ini", SYM, linkname="app.ini"),
        member("conf/copy.ini", LNK, linkname="conf/app.ini"),
        member("top", SYM, linkname="conf/../compose.yaml"),
        script,
    ]
    prepared = make_store().prepare(server.put("/ok.tar.gz", make_tar(entries)), None, {})
    root = prepared.path
    assert read_tree(root) == {
        "bin/start.sh": b"\0\0\0",
        "compose.yaml": COMPOSE[1],
        "conf/app.ini": b"a=1\n",
        "conf/copy.ini": b"a=1\n",
        "conf/current.ini": "-> app.ini",
        "top": "-> conf/../compose.yaml",
    }
    assert os.stat(root / "bin/start.sh").st_mode & 0o7777 == 0o755
    assert os.stat(root / "conf/app.ini").st_mode & 0o7777 == 0o644


@pytest.mark.parametrize(
    "path, target, inside",
    [
        ("l", "a", True),
        ("a/l", "../b", True),
        ("a/l", "../../b", False),
        ("a/b/l", "../../c/./d", True),
        ("l", "/etc", False),
        ("l", "", False),
        ("l", "a/../..", False),
    ],
)
def test_symlink_targets_are_read_lexically(path, target, inside):
    assert archive._link_stays_inside(path, target) is inside
