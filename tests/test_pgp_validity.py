"""One PGP verification path for commits and packages: a signature by an expired, revoked
or not-yet-valid key, an expired signature and one made in the future are refused in both,
with the path's own code. Keys and signatures are made by gpg, dated with its faked time;
the revoked key carries the revocation certificate gpg made with it. gpgv verifies.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite.config import GitConfig
from margo_lite.errors import PackageError, SourceError
from margo_lite.gitsource import GitSource
from tests.support.gitserver import Upstream
from tests.support.pgpkeys import Keys
from tests.support.pkgfixtures import make_store, make_tar, test_ca  # noqa: F401 (fixtures)

DAY = 86400.0
NOW = time.time()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    made = Keys(tmp_path_factory.mktemp("gnupg"))
    try:
        made.generate("good", created=NOW - 3 * DAY)
        made.generate("expired", created=NOW - 3 * DAY, expires="1d")
        made.generate("revoked", created=NOW - 3 * DAY)
        made.generate("future", created=NOW + DAY)
        yield made
    finally:
        made.close()


def signature(keys: Keys, case: str, data: bytes) -> tuple[str, bytes]:
    """(the key that should verify it, a binary detached signature over `data`)."""
    if case == "good":
        return "good", keys.sign("good", data, armor=False)
    if case == "expired-key":  # made while the key was valid; the key expired since
        return "expired", keys.sign("expired", data, armor=False, at=NOW - 2.5 * DAY)
    if case == "revoked-key":  # made before the key was revoked
        return "revoked", keys.sign("revoked", data, armor=False)
    if case == "expired-signature":
        return "good", keys.sign("good", data, armor=False, at=NOW - 2 * DAY, expires="1d")
    if case == "future-key":  # a key made tomorrow, a signature after it
        return "future", keys.sign("future", data, armor=False, at=NOW + DAY + 60)
    assert case == "future-signature"  # a good key, a signature dated tomorrow
    return "good", keys.sign("good", data, armor=False, at=NOW + DAY)


CASES = [
    "good",
    "expired-key",
    "revoked-key",
    "expired-signature",
    "future-key",
    "future-signature",
]


def public(keys: Keys, name: str) -> bytes:
    """The key file a device trusts: the revoked key as its owner published it, revoked."""
    if name == "revoked":
        return keys.revoked_public("revoked")
    return keys.public(name, armor=False)


def _signed_commit(up: Upstream, keys: Keys, case: str) -> tuple[str, str]:
    """A commit signed as git signs (a `gpgsig` header over the rest); (its id, key)."""
    unsigned = up.commit({"a.yaml": "a: 1\n"})
    raw = up.git("cat-file", "commit", unsigned).encode() + b"\n"
    key, sig = signature(keys, case, raw)
    armored = keys._gpg("--enarmor", input=sig)  # git stores an armored signature
    armored = armored.replace(b"ARMORED FILE", b"SIGNATURE")
    lines = [line for line in armored.decode().splitlines() if not line.startswith("Comment:")]
    header, _, message = raw.partition(b"\n\n")
    gpgsig = "gpgsig " + "\n ".join(lines)
    signed = header + b"\n" + gpgsig.encode() + b"\n\n" + message
    sha = up.git("hash-object", "-t", "commit", "-w", "--stdin", input=signed)
    up.set_branch(sha)
    return sha, key


@pytest.mark.parametrize("case", CASES)
def test_commit_path(tmp_path: Path, keys: Keys, case: str) -> None:
    up = Upstream(tmp_path / "up.git")
    sha, key = _signed_commit(up, keys, case)
    key_file = tmp_path / "trusted.gpg"
    key_file.write_bytes(public(keys, key))
    source = GitSource(
        GitConfig(url=str(up.path), trusted_keys=(str(key_file),)), tmp_path / "state"
    )
    assert source.poll().revision == sha
    if case == "good":
        assert dict(source.snapshot(sha).files) == {"a.yaml": b"a: 1\n"}
        return
    with pytest.raises(SourceError) as caught:
        source.snapshot(sha)
    assert caught.value.code == "GIT_SIGNATURE_INVALID"
    assert EXPECTED[case] in caught.value.message


@pytest.mark.parametrize("case", CASES)
def test_package_path(make_store, keys: Keys, case: str) -> None:
    tarball = make_tar([("compose.yaml", b"services:\n  web:\n    image: localhost/x:1\n")])
    key, sig = signature(keys, case, tarball)
    repo = {"pkgs/app.tgz": tarball, "pkgs/app.tgz.sig": sig, "keys/k.gpg": public(keys, key)}
    store = make_store()
    if case == "good":
        assert store.prepare("pkgs/app.tgz", "keys/k.gpg", repo).compose_file.is_file()
        return
    with pytest.raises(PackageError) as caught:
        store.prepare("pkgs/app.tgz", "keys/k.gpg", repo)
    assert caught.value.code == "SIGNATURE_INVALID"
    assert EXPECTED[case] in caught.value.message
    assert list((store._root / "pkgs").iterdir()) == []


EXPECTED = {
    "expired-key": "EXPKEYSIG",
    "revoked-key": "REVKEYSIG",
    "expired-signature": "EXPSIG",
    "future-key": "ERRSIG",
    "future-signature": "signature made in the future",
}
