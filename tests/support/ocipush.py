"""Pushes test artifacts into a registry through its API, as a publisher would.

Blobs go up as monolithic uploads (`POST /v2/<name>/blobs/uploads/`, then one `PUT` with the
digest), manifests with `PUT /v2/<name>/manifests/<tag>`. `compose_artifact` writes what
`docker compose publish` writes (OCI 1.1 form by default, the OCI 1.0 fallback on request);
`tar_package` an image manifest with one tar+gzip layer. On a 401 a token is fetched from
the realm the registry names, with push scope and the pusher's credentials.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from pathlib import Path

import urllib3

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"
COMPOSE_PROJECT = "application/vnd.docker.compose.project"
COMPOSE_EMPTY_CONFIG = "application/vnd.docker.compose.config.empty.v1+json"
COMPOSE_FILE = "application/vnd.docker.compose.file+yaml"
ENV_FILE = "application/vnd.docker.compose.envfile"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    found = {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
    if annotations:
        found["annotations"] = annotations
    return found


class Pusher:
    def __init__(
        self, host: str, ca_file: Path, *, user: str | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self._http = urllib3.PoolManager(ca_certs=str(ca_file), cert_reqs="CERT_REQUIRED")
        self._basic = (
            urllib3.make_headers(basic_auth=f"{user}:{password}") if user is not None else {}
        )
        self._token: str | None = None
        self.sizes: dict[str, int] = {}  # manifest digest -> size, for an index

    def _request(self, method: str, url: str, body: bytes = b"", headers: dict | None = None):
        if url.startswith("/"):
            url = f"https://{self.host}{url}"
        for _ in range(2):
            sent = dict(headers or {})
            if self._token:
                sent["Authorization"] = f"Bearer {self._token}"
            answer = self._http.request(method, url, body=body, headers=sent, redirect=False)
            challenge = answer.headers.get("WWW-Authenticate", "")
            if answer.status != 401 or not challenge.startswith("Bearer "):
                return answer
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            scope = params.get("scope", "").replace(":pull", ":pull,push")
            query = urllib.parse.urlencode({"service": params["service"], "scope": scope})
            token = self._http.request("GET", f"{params['realm']}?{query}", headers=self._basic)
            assert token.status == 200, (token.status, token.data)
            self._token = json.loads(token.data)["token"]
        raise AssertionError(f"{method} {url}: still 401 with a token")

    def blob(self, name: str, data: bytes) -> str:
        started = self._request("POST", f"/v2/{name}/blobs/uploads/")
        assert started.status == 202, (started.status, started.data)
        location = urllib.parse.urljoin(f"https://{self.host}/", started.headers["Location"])
        sep = "&" if "?" in location else "?"
        digest = digest_of(data)
        done = self._request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert done.status == 201, (done.status, done.data)
        return digest

    def manifest(self, name: str, reference: str, document: dict | bytes, media_type: str) -> str:
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        done = self._request(
            "PUT", f"/v2/{name}/manifests/{reference}", data, {"Content-Type": media_type}
        )
        assert done.status == 201, (done.status, done.data)
        self.sizes[digest_of(data)] = len(data)
        return digest_of(data)

    def compose_artifact(
        self,
        name: str,
        tag: str,
        files: list[tuple[str, bytes]],
        env_files: list[tuple[str, bytes]] = (),
        *,
        oci_1_0: bool = False,
    ) -> str:
        """Compose files and env files as `docker compose publish` lays them out."""
        layers = [
            descriptor(COMPOSE_FILE, data, {"com.docker.compose.file": file_name})
            for file_name, data in files
        ] + [
            descriptor(ENV_FILE, data, {"com.docker.compose.envfile": file_name})
            for file_name, data in env_files
        ]
        for _, data in [*files, *env_files]:
            self.blob(name, data)
        self.blob(name, b"{}")
        config_type = COMPOSE_EMPTY_CONFIG if oci_1_0 else EMPTY_JSON
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_type, b"{}"),
            "layers": layers,
        }
        if not oci_1_0:
            manifest["artifactType"] = COMPOSE_PROJECT
        return self.manifest(name, tag, manifest, OCI_MANIFEST)

    def raw_manifest(self, name: str, tag: str, layers: list[dict], **extra) -> str:
        """A manifest with the layers as given (blobs pushed before): for hostile tests."""
        self.blob(name, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COMPOSE_PROJECT,
            "config": descriptor(EMPTY_JSON, b"{}"),
            "layers": layers,
            **extra,
        }
        return self.manifest(name, tag, manifest, OCI_MANIFEST)

    def tar_package(self, name: str, tag: str, tarball: bytes) -> str:
        """An image manifest whose one tar+gzip layer holds the package folder."""
        self.blob(name, tarball)
        self.blob(name, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(EMPTY_JSON, b"{}"),
            "layers": [descriptor(TAR_GZIP, tarball)],
        }
        return self.manifest(name, tag, manifest, OCI_MANIFEST)

    def index(self, name: str, tag: str, manifests: list[tuple[str, str]]) -> str:
        """An OCI index of (digest, artifactType) manifests pushed before."""
        entries = [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": self.sizes[d], "artifactType": a}
            for d, a in manifests
        ]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.manifest(name, tag, index, OCI_INDEX)
