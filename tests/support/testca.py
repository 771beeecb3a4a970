"""A throwaway certificate authority made with `openssl`, and a server certificate from it.

For tests that need real, verified TLS on 127.0.0.1: the client trusts `ca_file` only.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestCA:
    ca_file: Path  # the CA certificate (PEM): what clients trust
    cert_file: Path  # the server certificate, for 127.0.0.1 and localhost
    key_file: Path  # the server's private key

    __test__ = False  # not a test class, whatever pytest thinks of the name


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "margo-lite test CA") -> TestCA:
    """Create a CA and a server certificate for 127.0.0.1 / localhost in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "3", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return TestCA(folder / "ca.pem", folder / "server.pem", folder / "server.key")
