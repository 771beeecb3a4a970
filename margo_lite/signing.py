"""Optional payload signing (`X-Payload-Signature`), done by the `openssl` command.

The contract: SHA-256 of the request body, signed with the device certificate's private
key; the header is base64 of `<public key>;<signature>`. Decision (the specification leaves
the encodings open): `<public key>` is the PEM SubjectPublicKeyInfo of the certificate's
key and `<signature>` the raw signature bytes `openssl dgst -sha256 -sign` makes (PKCS#1
v1.5 for RSA, DER for ECDSA). PEM holds no `;`, so a receiver splits at the first one.

The `openssl` command keeps the core free of a crypto library; it runs only when signing
is configured, so a device without it loses nothing else.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import WosError

log = logs.get(__name__)

HEADER = "X-Payload-Signature"
OPENSSL_TIMEOUT = 20.0
_NO_PASSPHRASE = ("-passin", "pass:")  # an encrypted key fails at once instead of prompting


def _openssl(args: Sequence[str], data: bytes = b"", *, what: str) -> bytes:
    try:
        result = subprocess.run(
            ["openssl", *args],
            input=data,
            capture_output=True,
            timeout=OPENSSL_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise WosError(
            "payload signing is configured but the openssl command is not installed",
            code="SIGNING_UNAVAILABLE",
        ) from None
    except subprocess.TimeoutExpired:
        raise WosError(f"openssl timed out while {what}", code="SIGNING_FAILED") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise WosError(
            f"openssl failed while {what}: {detail[0] if detail else result.returncode}",
            code="SIGNING_FAILED",
        )
    return result.stdout


class Signer:
    """Signs request bodies with the device key; checks at start that key and certificate match."""

    def __init__(self, key_file: str | os.PathLike[str], cert_file: str | os.PathLike[str]):
        self.key_file = str(key_file)
        cert_key = _openssl(
            ["x509", "-in", str(cert_file), "-noout", "-pubkey"], what=f"reading {cert_file}"
        )
        own_key = _openssl(
            ["pkey", "-in", self.key_file, "-pubout", *_NO_PASSPHRASE],
            what=f"reading {self.key_file}",
        )
        if cert_key.strip() != own_key.strip():
            raise WosError(
                f"wos.signing_key {self.key_file} does not belong to wos.signing_cert {cert_file}",
                code="SIGNING_KEY_MISMATCH",
            )
        self.public_pem = cert_key.strip() + b"\n"

    def sign(self, body: bytes) -> bytes:
        return _openssl(
            ["dgst", "-sha256", "-sign", self.key_file, *_NO_PASSPHRASE],
            body,
            what="signing a request body",
        )

    def header(self, body: bytes) -> str:
        """The value of `X-Payload-Signature` for `body`."""
        return base64.b64encode(self.public_pem + b";" + self.sign(body)).decode("ascii")


def split_header(value: str) -> tuple[bytes, bytes]:
    """(public key PEM, signature) from a header value; ValueError when malformed."""
    raw = base64.b64decode(value.encode("ascii"), validate=True)
    public_pem, sep, signature = raw.partition(b";")
    if not sep or b"BEGIN PUBLIC KEY" not in public_pem or not signature:
        raise ValueError("not <public key PEM>;<signature>")
    return public_pem, signature


def verify(value: str, body: bytes) -> bool:
    """Check a header against `body` with `openssl dgst -verify` (for receivers and tests)."""
    try:
        public_pem, signature = split_header(value)
    except ValueError:
        return False
    import tempfile  # late: only receivers and tests verify; tempfile loads shutil

    with tempfile.TemporaryDirectory(prefix="margo-lite-verify-") as tmp:
        key, sig = Path(tmp, "key.pem"), Path(tmp, "body.sig")
        key.write_bytes(public_pem)
        sig.write_bytes(signature)
        try:
            _openssl(
                ["dgst", "-sha256", "-verify", str(key), "-signature", str(sig)],
                body,
                what="verifying a signature",
            )
        except WosError:
            return False
    return True
