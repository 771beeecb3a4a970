"""Detached PGP signatures, verified by `gpgv` against keys given as bytes.

Only `gpgv` is needed at run time: it trusts exactly the keys in the keyring it is given,
has no trust database and reads no configuration. It wants binary keys, so ASCII-armored
keys (base64 with a CRC24, RFC 4880 section 6) are decoded here rather than by `gpg
--dearmor`, which would pull in all of GnuPG. A signature counts as valid only when gpgv
exits 0 and reports GOODSIG and VALIDSIG with no error, expiry or revocation status.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import PackageError

log = logs.get(__name__)

GPGV_TIMEOUT = 60.0
_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_END = "-----END PGP PUBLIC KEY BLOCK-----"
_BAD_STATUS = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}


def key_error(message: str) -> PackageError:
    return PackageError(message, code="KEY_INVALID")


def crc24(data: bytes) -> int:
    """The OpenPGP armor checksum (RFC 4880 section 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: bytes, *, source: str = "key") -> bytes:
    """Binary public keys from an armored key file (several blocks are concatenated).

    A binary key (its first byte is an OpenPGP packet tag) is returned as it is.
    """
    if text[:1] and text[0] & 0x80:
        return text
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise key_error(f"{source}: not an armored or binary PGP public key") from None
    keys = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != _BEGIN:
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip() and ":" in lines[i]:  # armor headers
            i += 1
        body: list[str] = []
        checksum = None
        while i < len(lines) and lines[i].strip() != _END:
            line = lines[i].strip()
            if line.startswith("=") and len(line) == 5:
                checksum = line[1:]
            elif line:
                body.append(line)
            i += 1
        if i == len(lines):
            raise key_error(f"{source}: armored key block has no end line")
        try:
            data = base64.b64decode("".join(body), validate=True)
            expected = None
            if checksum:
                expected = int.from_bytes(base64.b64decode(checksum, validate=True), "big")
        except (binascii.Error, ValueError):
            raise key_error(f"{source}: armored key is not valid base64") from None
        if expected is not None and crc24(data) != expected:
            raise key_error(f"{source}: armored key checksum does not match (damaged key)")
        if not data or not data[0] & 0x80:
            raise key_error(f"{source}: armored block holds no PGP packets")
        keys.append(data)
        i += 1
    if not keys:
        raise key_error(f"{source}: not an armored or binary PGP public key")
    return b"".join(keys)


def gpgv_path() -> str:
    found = shutil.which("gpgv")
    if not found:
        raise PackageError(
            "gpgv is not installed; it is needed to verify package signatures",
            code="GPGV_MISSING",
        )
    return found


def verify_detached(data_file: Path, signature: bytes, keyring: bytes, *, what: str) -> str:
    """Check `signature` over the file's content against `keyring` (binary keys).

    Returns the fingerprint of the signing key; raises SIGNATURE_INVALID otherwise.
    `what` names the package in messages.
    """
    gpgv = gpgv_path()
    with tempfile.TemporaryDirectory(prefix="margo-lite-gpgv.") as tmp:
        home = Path(tmp, "home")
        home.mkdir(mode=0o700)
        keyring_file = Path(tmp, "keyring.gpg")
        keyring_file.write_bytes(keyring)
        sig_file = Path(tmp, "signature")
        sig_file.write_bytes(signature)
        argv = [
            gpgv,
            "--homedir",
            str(home),
            "--keyring",
            str(keyring_file),
            "--status-fd",
            "1",
            str(sig_file),
            str(data_file),
        ]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                timeout=GPGV_TIMEOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PackageError(
                f"{what}: gpgv took longer than {GPGV_TIMEOUT:.0f}s", code="SIGNATURE_INVALID"
            ) from None
    status = _status(result.stdout)
    good = "GOODSIG" in status and bool(status.get("VALIDSIG"))
    if result.returncode != 0 or not good or _BAD_STATUS & status.keys():
        problems = sorted(_BAD_STATUS & status.keys()) or ["no good signature"]
        log.debug("gpgv on %s: %s", what, result.stderr.decode(errors="replace").strip())
        raise PackageError(
            f"{what}: signature does not verify against the trusted key ({', '.join(problems)})",
            code="SIGNATURE_INVALID",
        )
    return status["VALIDSIG"][0]


def _status(output: bytes) -> dict[str, list[str]]:
    """`[GNUPG:] KEYWORD args...` lines as {KEYWORD: args}."""
    found: dict[str, list[str]] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[9:].split()
            found.setdefault(keyword, args)
    return found
