"""The tests' registry: `devkit.registry.LocalRegistry` with the test CA's server certificate,
trusting a `TokenServer` when given one (`auth: token`)."""

from __future__ import annotations

from pathlib import Path

from margo_lite.devkit.registry import LocalRegistry
from tests.support.testca import TestCA
from tests.support.tokenserver import TokenServer


class Registry(LocalRegistry):
    """A running registry; `host` is `127.0.0.1:<port>`, `store` its storage folder."""

    def __init__(self, folder: Path, ca: TestCA, *, tokens: TokenServer | None = None) -> None:
        auth = {"token": tokens.registry_config()} if tokens is not None else None
        super().__init__(folder, ca.cert_file, ca.key_file, ca.ca_file, auth=auth)
        self.ca = ca
        self.tokens = tokens

    def location(self, name: str, revision: str) -> str:
        sep = "@" if ":" in revision else ":"
        return f"oci://{self.host}/{name}{sep}{revision}"
