"""Commit signatures: the tip must be signed by a trusted PGP key.

Git's part only: which bytes of a commit are signed. The verification itself (gpgv,
expired, revoked and future keys and signatures refused) is `margo_lite.pgp`, the same
path package signatures take.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from margo_lite import pgp
from margo_lite.errors import GitError, MargoLiteError


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


def _refusal(message: str, code: str | None = None) -> GitError:
    return GitError(message, code="GIT_SIGNATURE_INVALID")


def verify_commit_signature(raw: bytes, key_files: tuple[str, ...]) -> str:
    """The fingerprint of the trusted key that signed the commit; GIT_SIGNATURE_INVALID
    otherwise (unsigned, another key, tampered, expired, revoked, from the future)."""
    payload, signature = split_signature(raw)
    if signature is None:
        raise GitError("the commit is not signed", code="GIT_SIGNATURE_INVALID")
    try:
        keyring = pgp.keyring_from_files(key_files, setting="git.trusted_keys", refuse=_refusal)
    except MargoLiteError as exc:
        raise _refusal(exc.message) from None
    with tempfile.TemporaryDirectory(prefix="margo-lite-commit.") as tmp:
        data = Path(tmp, "commit")
        data.write_bytes(payload)
        return pgp.verify_detached(data, signature, keyring, what="the commit", refuse=_refusal)
