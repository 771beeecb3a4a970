"""Commit signatures: the tip must be signed by a trusted PGP key, checked offline by gpgv."""

from __future__ import annotations

import base64
import binascii
import subprocess
import tempfile
import time
from pathlib import Path

from margo_lite import logs
from margo_lite.errors import GitError

log = logs.get(__name__)


def split_signature(raw: bytes) -> tuple[bytes, bytes | None]:
    """(the signed payload, the signature) of a raw commit: git's own rule, the `gpgsig`
    header and its continuation lines removed from the headers."""
    head, sep, message = raw.partition(b"\n\n")
    kept, signature, in_sig = [], [], False
    for line in head.split(b"\n"):
        if line.startswith(b"gpgsig "):
            in_sig = True
            signature.append(line[len(b"gpgsig ") :])
        elif in_sig and line.startswith(b" "):
            signature.append(line[1:])
        else:
            in_sig = False
            kept.append(line)
    payload = b"\n".join(kept) + sep + message
    return payload, (b"\n".join(signature) + b"\n" if signature else None)


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP data from ASCII armor (gpgv reads binary keyrings only)."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP" not in text:
        return data
    body = text.split("-----BEGIN PGP", 1)[1].split("\n", 1)[1]
    body = body.split("-----END PGP", 1)[0]
    if "\n\n" in body.replace("\r", ""):
        body = body.replace("\r", "").split("\n\n", 1)[1]
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.startswith("=")]
    return base64.b64decode("".join(lines))


def verify_commit_signature(raw: bytes, key_files: tuple[str, ...]) -> None:
    """Raise GIT_SIGNATURE_INVALID unless a trusted key made the commit's signature."""
    payload, signature = split_signature(raw)
    if signature is None:
        raise GitError("the commit is not signed", code="GIT_SIGNATURE_INVALID")
    with tempfile.TemporaryDirectory(prefix="margo-lite-gpgv-") as tmp:
        keyring, sig, data = Path(tmp, "keys.gpg"), Path(tmp, "commit.sig"), Path(tmp, "commit")
        try:
            keyring.write_bytes(b"".join(dearmor(Path(k).read_bytes()) for k in key_files))
        except (OSError, ValueError, binascii.Error) as exc:
            raise GitError(
                f"cannot read git.trusted_keys: {exc}", code="GIT_SIGNATURE_INVALID"
            ) from None
        sig.write_bytes(signature)
        data.write_bytes(payload)
        argv = ["gpgv", "--status-fd", "1", "--keyring", str(keyring), str(sig), str(data)]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=60, env={"LANG": "C"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"cannot run gpgv: {exc}", code="GIT_SIGNATURE_INVALID") from None
        log.debug("gpgv took %.0f ms", (time.monotonic() - started) * 1000)
    if proc.returncode != 0 or b"[GNUPG:] VALIDSIG " not in proc.stdout:
        status = proc.stdout.decode(errors="replace")
        reason = next(
            (w for w in ("BADSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "ERRSIG") if w in status),
            "no valid signature",
        )
        raise GitError(
            f"the commit's signature does not verify against git.trusted_keys ({reason})",
            code="GIT_SIGNATURE_INVALID",
        )
