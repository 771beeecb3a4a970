"""Commit signature checks with real gpg-made keys and signatures, verified by gpgv."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from margo_lite.config import GitConfig
from margo_lite.errors import SourceError
from margo_lite.git.signature import split_signature
from margo_lite.gitsource import GitSource
from tests.support.gitserver import Upstream


def gpg(home: str, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--homedir", home, *args],
        check=True,
        capture_output=True,
        input=input,
        timeout=60,
    ).stdout


@pytest.fixture(scope="module")
def keys():
    """Two signing keys (trusted, other) in a throwaway GNUPGHOME, and their public files."""
    home = tempfile.mkdtemp(prefix="gpg")  # short: gpg-agent's socket path has a length limit
    out = Path(home) / "exported"
    out.mkdir()
    try:
        found = {}
        for name in ("trusted", "other"):
            gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>",
                "ed25519", "sign", "never")  # fmt: skip
            listing = gpg(home, "--with-colons", "--list-keys", f"{name}@example.com").decode()
            fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr"))
            (out / f"{name}.asc").write_bytes(gpg(home, "--armor", "--export", fpr))
            (out / f"{name}.gpg").write_bytes(gpg(home, "--export", fpr))
            found[name] = fpr
        yield {"home": home, "out": out, **found}
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def source_for(upstream: Upstream, state: Path, *key_files: Path) -> GitSource:
    cfg = GitConfig(url=str(upstream.path), trusted_keys=tuple(str(k) for k in key_files))
    return GitSource(cfg, state)


def signed_commit(upstream: Upstream, keys, who: str, files: dict) -> str:
    return upstream.commit(files, sign_key=keys[who], sign_env={"GNUPGHOME": keys["home"]})


@pytest.mark.parametrize("suffix", [".asc", ".gpg"], ids=["armored-key", "binary-key"])
def test_commit_signed_by_a_trusted_key_is_accepted(tmp_path, keys, suffix):
    upstream = Upstream(tmp_path / "up.git")
    sha = signed_commit(upstream, keys, "trusted", {"a.yaml": "a: 1\n"})
    source = source_for(upstream, tmp_path / "state", keys["out"] / f"trusted{suffix}")
    assert source.poll().revision == sha
    assert source.snapshot(sha).files == {"a.yaml": b"a: 1\n"}


@pytest.mark.parametrize("case", ["unsigned", "other-key", "tampered"])
def test_commit_without_a_trusted_signature_is_refused(tmp_path, keys, case):
    upstream = Upstream(tmp_path / "up.git")
    if case == "unsigned":
        sha = upstream.commit({"a.yaml": "a: 1\n"})
    elif case == "other-key":
        sha = signed_commit(upstream, keys, "other", {"a.yaml": "a: 1\n"})
    else:  # a signed commit whose message was changed afterwards
        good = signed_commit(upstream, keys, "trusted", {"a.yaml": "a: 1\n"})
        raw = upstream.git("cat-file", "commit", good) + "\n"
        sha = upstream.git(
            "hash-object", "-t", "commit", "-w", "--stdin",
            input=raw.replace("\n\nchange\n", "\n\nchanged\n").encode(),
        )  # fmt: skip
        upstream.set_branch(sha)
    trusted = keys["out"] / "trusted.asc"
    source = source_for(upstream, tmp_path / "state", trusted)
    assert source.poll().revision == sha
    with pytest.raises(SourceError) as err:
        source.snapshot(sha)
    assert err.value.code == "GIT_SIGNATURE_INVALID"


def test_split_signature_follows_git():
    raw = (
        b"tree 1111111111111111111111111111111111111111\n"
        b"author A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n"
        b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n abc\n -----END PGP SIGNATURE-----\n"
        b"\nmessage\n\nbody\n"
    )
    payload, signature = split_signature(raw)
    assert payload == (
        b"tree 1111111111111111111111111111111111111111\n"
        b"author A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n\nmessage\n\nbody\n"
    )
    assert signature == b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
    assert split_signature(payload) == (payload, None)
