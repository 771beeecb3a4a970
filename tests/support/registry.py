"""Debian's `docker-registry` (the distribution registry 2.8) on 127.0.0.1, over TLS.

Each `Registry` has its own storage folder, config file and port (the registry picks a free
one and logs it), and trusts a `TokenServer` when given one (`auth: token`). Requests are
counted from the registry's own access log, so a test can check that a cached package
cost no blob download.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.testca import TestCA
from tests.support.tokenserver import TokenServer
from tests.support.wait import wait_for

BINARY = "docker-registry"
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/[^ "]*) HTTP/[0-9.]+" (\d{3})')


class Registry:
    """A running registry; `host` is `127.0.0.1:<port>`, `store` its storage folder."""

    def __init__(self, folder: Path, ca: TestCA, *, tokens: TokenServer | None = None) -> None:
        self.folder = folder
        self.store = folder / "store"
        self.ca = ca
        self.tokens = tokens
        self.host = ""
        self._log = folder / "registry.log"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Registry:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.store)},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": "127.0.0.1:0",
                "secret": "margo-lite-test-registry",
                "tls": {"certificate": str(self.ca.cert_file), "key": str(self.ca.key_file)},
            },
        }
        if self.tokens is not None:
            config["auth"] = {"token": self.tokens.registry_config()}
        path = self.folder / "config.yml"
        path.write_text(yaml.safe_dump(config))
        with open(self._log, "wb") as log:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(
                [BINARY, "serve", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        port = wait_for(self._port, timeout=30, what="the registry to listen")
        self.host = f"127.0.0.1:{port}"
        return self

    def _port(self) -> str | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {self._log.read_text()[-2000:]}")
        found = _LISTENING.search(self._log.read_text(errors="replace"))
        return found.group(1) if found else None

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def location(self, name: str, revision: str) -> str:
        sep = "@" if ":" in revision else ":"
        return f"oci://{self.host}/{name}{sep}{revision}"

    def requests(self, method: str = "GET", part: str = "") -> list[tuple[str, int]]:
        """(path, status) of the requests the registry answered, as its access log says."""
        found = _REQUEST.findall(self._log.read_text(errors="replace"))
        return [(path, int(status)) for m, path, status in found if m == method and part in path]

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes on disk (to tamper with them)."""
        hex_ = digest.removeprefix("sha256:")
        return self.store / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
