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

    def generate(self, name: str, *, created: float | None = None, expires: str = "never") -> str:
        """A new ed25519 signing key for `name@example.test`; returns its fingerprint.

        `created` (seconds since the epoch) makes it at another time than now, with gpg's
        faked time; `expires` is gpg's expiry ("1d", "never")."""
        uid = f"{name} <{name}@example.test>"
        self._gpg(*_at(created), "--quick-generate-key", uid, "ed25519", "sign", expires)
        listing = self._gpg("--with-colons", "--list-keys", f"={uid}").decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        self.fingerprints[name] = fingerprint
        return fingerprint

    def revoked_public(self, name: str) -> bytes:
        """The public key (binary) with the revocation certificate gpg made with it. Made
        in a second GNUPGHOME, so that this one can still sign with the key."""
        cert = (self.home / "openpgp-revocs.d" / f"{self.fingerprints[name]}.rev").read_bytes()
        other = Keys(self.home / "revoked-view")
        try:
            other._gpg("--import", input=self.public(name, armor=False))
            # gpg keeps the certificate defused with a leading ':' on its armor line
            other._gpg("--import", input=cert.replace(b":-----BEGIN", b"-----BEGIN"))
            return other._gpg("--export", self.fingerprints[name])
        finally:
            other.close()

    def public(self, name: str, *, armor: bool = True) -> bytes:
        return self._gpg(*(["--armor"] if armor else []), "--export", self.fingerprints[name])

    def sign(
        self,
        name: str,
        data: bytes,
        *,
        armor: bool = True,
        detach: bool = True,
        at: float | None = None,
        expires: str | None = None,
    ) -> bytes:
        """A detached signature over `data` (armored `.asc` or binary `.sig`).

        With `detach=False`, a signed message that holds `data` itself. `at` (seconds since
        the epoch) dates the signature with gpg's faked time; `expires` ("1d") makes it
        expire that long after it was made.
        """
        args = ["--local-user", self.fingerprints[name], "--detach-sign" if detach else "--sign"]
        if expires:
            args[:0] = ["--default-sig-expire", expires]
        return self._gpg(*_at(at), *args, *(["--armor"] if armor else []), input=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self._env, capture_output=True, timeout=60)


def _at(when: float | None) -> list[str]:
    """gpg options that make it act at `when` (frozen there), or none for now."""
    return [] if when is None else ["--faked-system-time", f"{int(when)}!"]
