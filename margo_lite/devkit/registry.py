"""A local OCI registry for the demo: Debian's `docker-registry` on 127.0.0.1 over TLS, and a
push of a Compose OCI artifact into it, as `docker compose publish` lays it out.

The registry gets a storage folder, a config file and a port of its own (it picks a free one
and logs it). Pushes are monolithic blob uploads and one manifest `PUT`, verified against the
demo's CA. No authentication: the registry listens on the loopback address only.
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
    `127.0.0.1:<port>`."""

    def __init__(self, folder: Path, cert: Path, key: Path, ca_file: Path) -> None:
        self.folder = Path(folder)
        self.host = ""
        self._cert, self._key = cert, key
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
            "storage": {"filesystem": {"rootdirectory": str(self.folder / "store")}},
            "http": {
                "addr": "127.0.0.1:0",
                "secret": "margo-lite-demo-registry",
                "tls": {"certificate": str(self._cert), "key": str(self._key)},
            },
        }
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
