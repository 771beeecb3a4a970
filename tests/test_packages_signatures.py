"""Signatures: gpgv verifies a package before anything of it is read or extracted.

Keys are made with `gpg --batch` in a private GNUPGHOME at test time; the agent side only
needs `gpgv`. "Refused before any container exists" is checked here as: prepare raises and
no ready folder exists, so there is nothing a compose tool could start.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import base64

import pytest

from margo_lite import pgp
from margo_lite.errors import PackageError, PackageTransientError
from tests.support.pkgfixtures import (  # noqa: F401 (fixtures)
    cache_leftovers,
    make_store,
    make_tar,
    pgp_keys,
    server,
    test_ca,
)

COMPOSE = b"services:\n  web:\n    image: localhost/testimg:1\n"


@pytest.fixture
def tarball() -> bytes:
    return make_tar([("compose.yaml", COMPOSE), ("app.ini", b"a=1\n")])


def publish(server, keys, tarball: bytes, *, signer="vendor", suffix=".asc") -> tuple[str, str]:
    """Serve the package, its detached signature and the vendor's key; (package, key) URLs."""
    url = server.put("/app.tar.gz", tarball)
    server.put("/app.tar.gz" + suffix, keys.sign(signer, tarball, armor=suffix == ".asc"))
    return url, server.put("/vendor.asc", keys.public("vendor"))


def refused(store, *args) -> PackageError | PackageTransientError:
    with pytest.raises((PackageError, PackageTransientError)) as caught:
        store.prepare(*args)
    assert list((store._root / "pkgs").iterdir()) == []
    return caught.value


@pytest.mark.parametrize("suffix", [".asc", ".sig"])
def test_signed_package_verifies(server, make_store, pgp_keys, tarball, suffix):
    url, key_url = publish(server, pgp_keys, tarball, suffix=suffix)
    prepared = make_store().prepare(url, key_url, {})
    assert prepared.compose_file.read_bytes() == COMPOSE


def test_signature_url_keeps_the_query(server, make_store, pgp_keys, tarball):
    url, key_url = publish(server, pgp_keys, tarball)
    assert make_store().prepare(url + "?v=2", key_url, {}).compose_file.is_file()
    assert server.downloads("/app.tar.gz.asc") == 1


def test_tampered_package_is_refused(server, make_store, pgp_keys, tarball):
    url, key_url = publish(server, pgp_keys, tarball)
    server.put("/app.tar.gz", make_tar([("compose.yaml", COMPOSE + b"    privileged: true\n")]))
    error = refused(make_store(), url, key_url, {})
    assert error.code == "SIGNATURE_INVALID"


def test_signature_by_another_key_is_refused(server, make_store, pgp_keys, tarball):
    url, key_url = publish(server, pgp_keys, tarball, signer="mallory")
    error = refused(make_store(), url, key_url, {})
    assert error.code == "SIGNATURE_INVALID"


def test_missing_signature_is_refused(server, make_store, pgp_keys, tarball):
    url = server.put("/app.tar.gz", tarball)
    key_url = server.put("/vendor.asc", pgp_keys.public("vendor"))
    error = refused(make_store(), url, key_url, {})
    assert error.code == "SIGNATURE_MISSING"
    assert server.requests("/app.tar.gz.asc") == 1 and server.requests("/app.tar.gz.sig") == 1


def test_garbage_signature_is_refused(server, make_store, pgp_keys, tarball):
    url, key_url = publish(server, pgp_keys, tarball)
    server.put(
        "/app.tar.gz.asc", b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    )
    assert refused(make_store(), url, key_url, {}).code == "SIGNATURE_INVALID"


def test_a_signed_message_of_something_else_is_not_a_signature(
    server, make_store, pgp_keys, tarball
):
    """A vendor-signed message (not detached) must not vouch for the package beside it."""
    url, key_url = publish(server, pgp_keys, tarball)
    server.put("/app.tar.gz.asc", pgp_keys.sign("vendor", b"an old release note", detach=False))
    assert refused(make_store(), url, key_url, {}).code == "SIGNATURE_INVALID"


def test_without_gpgv_nothing_signed_is_used(server, make_store, pgp_keys, tarball, monkeypatch):
    url, key_url = publish(server, pgp_keys, tarball)
    monkeypatch.setenv("PATH", "/nonexistent")  # gpgv is not installed on this "device"
    assert refused(make_store(), url, key_url, {}).code == "GPGV_MISSING"


def test_unchanged_package_is_verified_again_when_its_signature_changes(
    server, make_store, pgp_keys, tarball
):
    store = make_store()
    url, key_url = publish(server, pgp_keys, tarball)
    store.prepare(url, key_url, {})
    server.put("/app.tar.gz.asc", pgp_keys.sign("mallory", tarball))
    with pytest.raises(PackageError, match="SIGNATURE_INVALID"):
        store.prepare(url, key_url, {})
    assert server.downloads("/app.tar.gz") == 1  # the cached bytes were checked again


def test_signed_package_unchanged_costs_no_download(server, make_store, pgp_keys, tarball):
    store = make_store()
    url, key_url = publish(server, pgp_keys, tarball)
    assert store.prepare(url, key_url, {}) == store.prepare(url, key_url, {})
    for path in ("/app.tar.gz", "/app.tar.gz.asc", "/vendor.asc"):
        assert server.answers[path] == [200, 304], path


def test_signed_package_and_key_in_the_repository(make_store, pgp_keys, tarball):
    repo = {
        "pkgs/app.tgz": tarball,
        "pkgs/app.tgz.sig": pgp_keys.sign("vendor", tarball, armor=False),
        "keys/vendor.gpg": pgp_keys.public("vendor", armor=False),
    }
    assert make_store().prepare("pkgs/app.tgz", "keys/vendor.gpg", repo).compose_file.is_file()
    repo["pkgs/app.tgz.sig"] = pgp_keys.sign("mallory", tarball, armor=False)
    with pytest.raises(PackageError, match="SIGNATURE_INVALID"):
        make_store().prepare("pkgs/app.tgz", "keys/vendor.gpg", repo)


def test_folder_in_the_repository_cannot_be_signed(make_store, pgp_keys):
    repo = {"app/compose.yaml": COMPOSE, "vendor.asc": pgp_keys.public("vendor")}
    assert refused(make_store(), "app", "vendor.asc", repo).code == "SIGNATURE_MISSING"


def test_require_signature_refuses_unsigned_packages(server, make_store, tarball):
    url = server.put("/app.tar.gz", tarball)
    error = refused(make_store(require_signature=True), url, None, {})
    assert error.code == "SIGNATURE_MISSING"
    assert server.requests("/app.tar.gz") == 0  # refused before downloading anything


def test_pinned_key_wins_over_the_key_location(server, make_store, pgp_keys, tarball, tmp_path):
    """A compromised server swapping package, signature and key together is still refused."""
    pinned = tmp_path / "vendor.asc"
    pinned.write_bytes(pgp_keys.public("vendor"))
    url = server.put("/app.tar.gz", tarball)
    server.put("/app.tar.gz.asc", pgp_keys.sign("mallory", tarball))
    mallory_key = server.put("/mallory.asc", pgp_keys.public("mallory"))
    store = make_store(trusted_keys=(str(pinned),))
    assert refused(store, url, mallory_key, {}).code == "SIGNATURE_INVALID"
    server.put("/app.tar.gz.asc", pgp_keys.sign("vendor", tarball))
    assert store.prepare(url, mallory_key, {}).compose_file.is_file()
    assert server.requests("/mallory.asc") == 0  # the pinned key is used, the other not even read


def test_pinned_keys_with_require_signature_need_no_key_location(
    server, make_store, pgp_keys, tarball, tmp_path
):
    pinned = tmp_path / "keys.asc"
    pinned.write_bytes(pgp_keys.public("mallory") + pgp_keys.public("vendor"))
    url, _ = publish(server, pgp_keys, tarball)
    store = make_store(trusted_keys=(str(pinned),), require_signature=True)
    assert store.prepare(url, None, {}).compose_file.is_file()


def test_bad_keys_are_refused(server, make_store, pgp_keys, tarball):
    url, _ = publish(server, pgp_keys, tarball)
    not_a_key = server.put("/junk.asc", b"hello, I am not a key\n")
    assert refused(make_store(), url, not_a_key, {}).code == "KEY_INVALID"
    error = refused(make_store(), url, server.url("/no-such-key.asc"), {})
    assert error.code == "PACKAGE_DOWNLOAD_FAILED"


def test_dearmor_matches_gpg_and_checks_the_crc(pgp_keys):
    armored = pgp_keys.public("vendor")
    assert pgp.dearmor(armored) == pgp_keys.public("vendor", armor=False)
    lines = armored.decode().splitlines()
    crc_index = next(i for i, line in enumerate(lines) if line.startswith("="))
    crc = int.from_bytes(base64.b64decode(lines[crc_index][1:]), "big")
    lines[crc_index] = "=" + base64.b64encode(((crc ^ 1) & 0xFFFFFF).to_bytes(3, "big")).decode()
    with pytest.raises(PackageError, match="checksum"):
        pgp.dearmor("\n".join(lines).encode())


def test_crc24_known_value():
    assert pgp.crc24(b"") == 0xB704CE
    assert pgp.crc24(b"123456789") == 0x21CF02  # the CRC-24/OpenPGP check value
