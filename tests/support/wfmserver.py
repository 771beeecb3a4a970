"""A real HTTPS server on 127.0.0.1 that serves a Margo 1.0 desired state, for source tests.

It answers `GET {prefix}/api/v1/deployments` with a State Manifest (ETag = the digest of
its bytes, `304` to a matching `If-None-Match`), and the content-addressed documents and
bundle the manifest names. Tests publish documents, then read the request log; they may
also serve raw manifests or replace any body (a tampered document).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import ssl
import tarfile
import threading
import urllib.parse
from dataclasses import dataclass

from tests.support.testca import TestCA


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_bundle(files: dict[str, bytes]) -> bytes:
    """tar+gzip of `files` at the archive root, deterministic."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    status: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: WfmServer

    def get_request(self):
        sock, addr = self.socket.accept()
        sock = self.owner.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            status, body, extra = owner.answer(path, headers)
            owner.seen.append(Seen(path, headers, status))
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class WfmServer:
    """The desired-state endpoints of a WFM under `prefix`, over TLS from `ca`."""

    def __init__(self, ca: TestCA, prefix: str = "/wfm/margo") -> None:
        self.prefix = prefix
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(ca.cert_file, ca.key_file)
        self.lock = threading.Lock()
        self.manifest = b""
        self.etag: str | None = None  # served instead of the manifest's digest
        self.refuse: tuple[int, dict] | None = None  # (status, problem) for every request
        self.bodies: dict[str, bytes] = {}  # api path -> body
        self.seen: list[Seen] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WfmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}{self.prefix}"

    # --- what is served -------------------------------------------------------------------

    def publish(self, docs: dict[str, bytes], version: int, *, bundle: bool = True) -> bytes:
        """Serve `docs` ({deploymentId: YAML bytes}) under manifest `version`; returns the
        manifest's bytes."""
        refs = []
        for dep, data in docs.items():
            url = f"/api/v1/deployments/{dep}/{digest(data)}"
            refs.append(
                {"deploymentId": dep, "digest": digest(data), "sizeBytes": len(data), "url": url}
            )
        bundle_ref = None
        served = {ref["url"]: docs[ref["deploymentId"]] for ref in refs}
        if docs and bundle:
            archive = make_bundle({f"{dep}.yaml": data for dep, data in docs.items()})
            bundle_ref = {
                "mediaType": "application/vnd.margo.bundle.v1+tar+gzip",
                "digest": digest(archive),
                "sizeBytes": len(archive),
                "url": f"/api/v1/bundles/{digest(archive)}",
            }
            served[bundle_ref["url"]] = archive
        manifest = {"manifestVersion": version, "bundle": bundle_ref, "deployments": refs}
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        with self.lock:
            self.bodies.update(served)
            self.manifest = raw
        return raw

    def serve_manifest(self, raw: bytes) -> None:
        with self.lock:
            self.manifest = raw

    def replace(self, api_path: str, body: bytes) -> None:
        with self.lock:
            self.bodies[api_path] = body

    def requests(self, since: int = 0) -> list[Seen]:
        with self.lock:
            return list(self.seen[since:])

    # --- answers --------------------------------------------------------------------------

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if not path.startswith(self.prefix + "/api/v1/"):
            return 404, b"", {}
        api = path[len(self.prefix) :]
        if self.refuse is not None:
            status, problem = self.refuse
            return (
                status,
                json.dumps(problem).encode(),
                {"Content-Type": "application/problem+json"},
            )
        if api == "/api/v1/deployments":
            etag = f'"{self.etag or digest(self.manifest)}"'
            if headers.get("if-none-match") == etag:
                return 304, b"", {"ETag": etag}
            return (
                200,
                self.manifest,
                {
                    "ETag": etag,
                    "Content-Type": "application/vnd.margo.manifest.v1+json",
                },
            )
        body = self.bodies.get(api)
        if body is None:
            problem = {"type": "about:blank", "title": "Not Found", "status": 404}
            return 404, json.dumps(problem).encode(), {"Content-Type": "application/problem+json"}
        return 200, body, {"ETag": f'"{api.rsplit("/", 1)[-1]}"'}
