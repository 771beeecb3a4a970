"""Test PGP keys, made with `gpg --batch` in a private GNUPGHOME at test time.

`close()` stops the gpg-agent that gpg starts for the signing keys.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class Keys:
    """One GNUPGHOME holding any number of signing keys, named by their user id."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = {**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"}
        self.fingerprints: dict[str, str] = {}

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        base = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
        result = subprocess.run(
            [*base, *args], input=input, capture_output=True, env=self._env, timeout=60
        )
        if result.returncode != 0:
            raise AssertionError(f"gpg {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout

    def generate(self, name: str) -> str:
        """A new ed25519 signing key for `name@example.test`; returns its fingerprint."""
        uid = f"{name} <{name}@example.test>"
        self._gpg("--quick-generate-key", uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys", f"={uid}").decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        self.fingerprints[name] = fingerprint
        return fingerprint

    def public(self, name: str, *, armor: bool = True) -> bytes:
        return self._gpg(*(["--armor"] if armor else []), "--export", self.fingerprints[name])

    def sign(self, name: str, data: bytes, *, armor: bool = True, detach: bool = True) -> bytes:
        """A detached signature over `data` (armored `.asc` or binary `.sig`).

        With `detach=False`, a signed message that holds `data` itself.
        """
        args = ["--local-user", self.fingerprints[name], "--detach-sign" if detach else "--sign"]
        return self._gpg(*args, *(["--armor"] if armor else []), input=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self._env, capture_output=True, timeout=60)
