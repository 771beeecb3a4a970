"""A throwaway trust domain for tests and the demo: a CA issuing SPIFFE X.509-SVIDs.

Made with the `openssl` command (margo-lite itself never needs it): EC P-256 keys, the
SVID leaf profile (not a CA, digitalSignature only, one URI SAN), and on request the
certificates a device must refuse (no URI SAN, two, a CA flag). Serial numbers are
random and returned, so a test can tell which certificate a peer presented.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from margo_lite.valueclass import dataclass

TRUST_DOMAIN = "margo-lite.test"
WFM_ID = "wfm-1"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: int
    uris: tuple[str, ...]


def wfm_id(trust_domain: str = TRUST_DOMAIN, wfm: str = WFM_ID) -> str:
    return f"spiffe://{trust_domain}/margo/wfm/{wfm}"


def client_id(client: str, trust_domain: str = TRUST_DOMAIN, wfm: str = WFM_ID) -> str:
    return f"{wfm_id(trust_domain, wfm)}/client/{client}"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[:500]}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


class SvidCA:
    """A CA in `folder` (`ca.pem` is the trust bundle); `issue()` makes SVIDs and others."""

    def __init__(self, folder: Path, *, name: str = "margo-lite test trust domain") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.folder / "ca.pem"
        self._ca_key = self.folder / "ca.key"
        if not self.ca_file.exists():
            _openssl(
                "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
                "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                cwd=self.folder,
            )  # fmt: skip

    def issue(
        self,
        name: str,
        uris: tuple[str, ...] | list[str],
        *,
        server: bool = False,
        key: Path | None = None,
        extra_san: str = "",
        ca: bool = False,
    ) -> Issued:
        """Certificate and key `name.pem` / `name.key`. `uris` become URI SANs (any number,
        for refusals); `server` adds serverAuth and the 127.0.0.1 address; `key` reuses a
        key (a renewal with the same key); `ca` marks it a CA (not an SVID)."""
        serial = secrets.randbits(62) | 1 << 62
        key_name = f"{name}.key"
        if key is not None:
            (self.folder / key_name).write_bytes(Path(key).read_bytes())
            _openssl(
                "req", "-new", "-key", key_name, "-out", f"{name}.csr", "-subj", f"/CN={name}",
                cwd=self.folder,
            )  # fmt: skip
        else:
            _openssl(
                "req", *_EC, "-keyout", key_name, "-out", f"{name}.csr", "-subj", f"/CN={name}",
                cwd=self.folder,
            )  # fmt: skip
        (self.folder / key_name).chmod(0o600)
        sans = [f"URI:{uri}" for uri in uris]
        if server:
            sans.append("IP:127.0.0.1")
        if extra_san:
            sans.append(extra_san)
        lines = [
            "basicConstraints=critical,CA:TRUE" if ca else "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyCertSign" if ca else
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth"),
        ]  # fmt: skip
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        (self.folder / f"{name}.ext").write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-out", f"{name}.pem", "-days", "3",
            "-extfile", f"{name}.ext",
            cwd=self.folder,
        )  # fmt: skip
        return Issued(self.folder / f"{name}.pem", self.folder / key_name, serial, tuple(uris))

    def wfm(self, name: str = "wfm", spiffe: str | None = None) -> Issued:
        """A WFM server SVID (`spiffe://<td>/margo/wfm/<wfm-id>` by default)."""
        return self.issue(name, [spiffe or wfm_id()], server=True)

    def device(self, client: str, name: str | None = None, key: Path | None = None) -> Issued:
        """A device (WFM client) SVID."""
        return self.issue(name or f"device-{client}", [client_id(client)], key=key)
