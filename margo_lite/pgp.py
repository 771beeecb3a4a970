"""Detached PGP signatures, verified by `gpgv` against keys given as bytes: the one
verification path of margo-lite, for package signatures and for signed commits alike.

Only `gpgv` is needed at run time: it trusts exactly the keys in the keyring it is given,
has no trust database and reads no configuration. It wants binary keys, so ASCII-armored
keys (base64 with a CRC24, RFC 4880 section 6) are decoded here rather than by `gpg
--dearmor`, which would pull in all of GnuPG. A signature counts as valid only when gpgv
exits 0 and reports GOODSIG and VALIDSIG with no error, expiry or revocation status, and
the signature was not made in the future. gpgv exits 0 for a signature by an expired or
revoked key (EXPKEYSIG, REVKEYSIG): the exit code alone is not enough. A key created in
the future (a clock behind, or a forged date) is gpgv's ERRSIG.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import MargoLiteError, PackageError

log = logs.get(__name__)

GPGV_TIMEOUT = 60.0
_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_END = "-----END PGP PUBLIC KEY BLOCK-----"
_BAD_STATUS = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
CLOCK_SKEW = 300.0  # seconds a signature may seem to come from the future (clocks differ)

#: Builds the caller's error from a message and, optionally, a more specific code.
Refusal = Callable[..., MargoLiteError]


def package_refusal(message: str, code: str = "SIGNATURE_INVALID") -> MargoLiteError:
    return PackageError(message, code=code)


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


def keyring_from_files(paths: tuple[str, ...], *, setting: str, refuse: Refusal) -> bytes:
    """The binary keyring of the key files a setting names (`git.trusted_keys`,
    `packages.trusted_keys`); an unreadable file is `refuse(message)`."""
    keys = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise refuse(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
        keys.append(dearmor(data, source=f"{setting} {path}"))
    return b"".join(keys)


def gpgv_path(refuse: Refusal = package_refusal) -> str:
    found = shutil.which("gpgv")
    if not found:
        raise refuse("gpgv is not installed; it is needed to verify signatures", "GPGV_MISSING")
    return found


def verify_detached(
    data_file: Path,
    signature: bytes,
    keyring: bytes,
    *,
    what: str,
    refuse: Refusal = package_refusal,
    now: Callable[[], float] = time.time,
) -> str:
    """Check `signature` over the file's content against `keyring` (binary keys).

    Returns the fingerprint of the signing key. Otherwise raises `refuse(message)`:
    SIGNATURE_INVALID for packages by default; the commit path passes its own code.
    `what` names the signed thing in messages.
    """
    gpgv = gpgv_path(refuse)
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
            raise refuse(f"{what}: gpgv took longer than {GPGV_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise refuse(f"{what}: cannot run gpgv: {exc.strerror or exc}") from None
    status = _status(result.stdout)
    problems = sorted(_BAD_STATUS & status.keys())
    good = "GOODSIG" in status and bool(status.get("VALIDSIG"))
    if good and not problems:
        made = _seconds(status["VALIDSIG"][2] if len(status["VALIDSIG"]) > 2 else "")
        if made is None or made > now() + CLOCK_SKEW:
            problems = ["signature made in the future"]
    if result.returncode != 0 or not good or problems:
        problems = problems or ["no good signature"]
        log.debug("gpgv on %s: %s", what, result.stderr.decode(errors="replace").strip())
        raise refuse(
            f"{what}: signature does not verify against the trusted keys ({', '.join(problems)})"
        )
    return status["VALIDSIG"][0]


def _seconds(stamp: str) -> float | None:
    """A gpgv status time stamp: seconds since the epoch, or ISO 8601 (`20240101T120000`)."""
    if stamp.isdigit():
        return float(stamp)
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


def _status(output: bytes) -> dict[str, list[str]]:
    """`[GNUPG:] KEYWORD args...` lines as {KEYWORD: args}."""
    found: dict[str, list[str]] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[9:].split()
            found.setdefault(keyword, args)
    return found
