"""Fixtures for the package tests: a test CA, signing keys, an HTTPS package server, a store.

Import the ones a test module uses (`from tests.support.pkgfixtures import ...`).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from margo_lite import valueclass
from margo_lite.config import PackagesConfig
from margo_lite.download import BACKOFF, Downloader
from margo_lite.packages import PackageStore
from margo_lite.schedule import Backoff
from tests.support.pgpkeys import Keys
from tests.support.pkgserver import PackageServer
from tests.support.testca import TestCA, make_ca


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def pgp_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Two signing keys: "vendor" (the right one) and "mallory" (any other key)."""
    keys = Keys(tmp_path_factory.mktemp("gnupg"))
    try:
        keys.generate("vendor")
        keys.generate("mallory")
        yield keys
    finally:
        keys.close()


@pytest.fixture
def server(test_ca: TestCA) -> Iterator[PackageServer]:
    with PackageServer(test_ca) as running:
        yield running


@pytest.fixture
def make_store(tmp_path: Path, test_ca: TestCA) -> Callable[..., PackageStore]:
    """A store in tmp_path/cache trusting the test CA; keyword arguments change the config.

    Backoff sleeps are recorded in `store.sleeps` instead of slept.
    """

    def make(*, backoff: Backoff | None = None, **changes) -> PackageStore:
        changes.setdefault("ca_file", str(test_ca.ca_file))
        cfg = valueclass.replace(PackagesConfig(), **changes)
        sleeps: list[float] = []
        downloader = Downloader(
            timeout=cfg.timeout,
            deadline=cfg.deadline,
            ca_file=cfg.ca_file,
            backoff=backoff or BACKOFF,
            sleep=sleeps.append,
        )
        store = PackageStore(cfg, tmp_path / "cache", downloader=downloader)
        store.sleeps = sleeps  # type: ignore[attr-defined]
        return store

    return make


def make_tar(
    entries: list[tarfile.TarInfo | tuple[str, bytes]], *, gzip: bool = True, mode: str = ""
) -> bytes:
    """A tarball of (name, content) files and ready-made TarInfo members (links, devices...).

    gzip-compressed unless `gzip` is false; `mode` ("w:xz", "w:bz2") overrides both.
    """
    out = io.BytesIO()
    mode = mode or ("w:gz" if gzip else "w")
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry, io.BytesIO(b"\0" * entry.size) if entry.isreg() else None)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def member(name: str, kind: bytes, *, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    info.mode = 0o644
    return info


def cache_leftovers(cache: Path) -> list[str]:
    """Files in the cache's package and temporary folders (should be none after a refusal)."""
    return sorted(
        str(p.relative_to(cache)) for folder in ("pkgs", "tmp") for p in (cache / folder).rglob("*")
    )
