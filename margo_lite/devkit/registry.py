"""Debian's `docker-registry` (the distribution registry 2.8) on 127.0.0.1 over TLS, for the
demo and the tests, and a push of a Compose OCI artifact as `docker compose publish` lays it
out.

Each registry has its own storage folder, config file and port (it picks a free one and logs
it); `auth` is the registry's `auth` section (the tests' token service), none by default.
Requests are read back from the registry's own access log, so a test can check that a cached
package cost no blob download. Pushes are monolithic blob uploads and one manifest `PUT`,
verified against `ca_file` (the tests' pusher with tokens and hostile layouts is
tests/support/ocipush.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import urllib3
import yaml

BINARY = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"
COMPOSE_PROJECT = "application/vnd.docker.compose.project"
COMPOSE_FILE = "application/vnd.docker.compose.file+yaml"
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/[^ "]*) HTTP/[0-9.]+" (\d{3})')


class RegistryError(RuntimeError):
    pass


def _descriptor(media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    found = {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    if annotations:
        found["annotations"] = annotations
    return found


class LocalRegistry:
    """`with LocalRegistry(folder, cert, key, ca_file) as registry:`; `registry.host` is
    `127.0.0.1:<port>`, `store` its storage folder."""

    def __init__(
        self, folder: Path, cert: Path, key: Path, ca_file: Path, *, auth: dict | None = None
    ) -> None:
        self.folder = Path(folder)
        self.store = self.folder / "store"
        self.host = ""
        self._cert, self._key = cert, key
        self._auth = auth
        self._http = urllib3.PoolManager(ca_certs=str(ca_file), cert_reqs="CERT_REQUIRED")
        self._log = self.folder / "registry.log"
        self._proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which(BINARY) is not None

    def __enter__(self) -> LocalRegistry:
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
                "secret": "margo-lite-demo-registry",
                "tls": {"certificate": str(self._cert), "key": str(self._key)},
            },
        }
        if self._auth is not None:
            config["auth"] = self._auth
        path = self.folder / "config.yml"
        path.write_text(yaml.safe_dump(config))
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [BINARY, "serve", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self.host:
            if self._proc.poll() is not None:
                raise RegistryError(f"{BINARY} exited: {self._log.read_text()[-1000:]}")
            found = _LISTENING.search(self._log.read_text(errors="replace"))
            if found:
                self.host = f"127.0.0.1:{found.group(1)}"
            elif time.monotonic() > deadline:
                raise RegistryError(f"{BINARY} did not start listening within 30s")
            else:
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def requests(self, method: str = "GET", part: str = "") -> list[tuple[str, int]]:
        """(path, status) of the requests the registry answered, as its access log says."""
        found = _REQUEST.findall(self._log.read_text(errors="replace"))
        return [(path, int(status)) for m, path, status in found if m == method and part in path]

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes on disk (to tamper with them)."""
        hex_ = digest.removeprefix("sha256:")
        return self.store / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def _request(self, method: str, url: str, body: bytes, headers: dict, want: int):
        if url.startswith("/"):
            url = f"https://{self.host}{url}"
        answer = self._http.request(method, url, body=body, headers=headers, redirect=False)
        if answer.status != want:
            raise RegistryError(f"{method} {url}: HTTP {answer.status} {answer.data[:200]!r}")
        return answer

    def _blob(self, name: str, data: bytes) -> None:
        started = self._request("POST", f"/v2/{name}/blobs/uploads/", b"", {}, 202)
        location = urllib.parse.urljoin(f"https://{self.host}/", started.headers["Location"])
        sep = "&" if "?" in location else "?"
        digest = _descriptor("", data)["digest"]
        self._request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
            201,
        )

    def push_compose(self, name: str, tag: str, compose: bytes) -> str:
        """One compose file as a Compose OCI artifact `name:tag`; returns its `oci://` URL
        (without the tag: the deployment's `revision` names it)."""
        self._blob(name, compose)
        self._blob(name, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COMPOSE_PROJECT,
            "config": _descriptor(EMPTY_JSON, b"{}"),
            "layers": [
                _descriptor(COMPOSE_FILE, compose, {"com.docker.compose.file": "compose.yaml"})
            ],
        }
        data = json.dumps(manifest).encode()
        self._request(
            "PUT", f"/v2/{name}/manifests/{tag}", data, {"Content-Type": OCI_MANIFEST}, 201
        )
        return f"oci://{self.host}/{name}"
