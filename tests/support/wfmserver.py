"""A real HTTPS server on 127.0.0.1 that serves a Margo 1.0 desired state, for source tests.

It answers `GET {prefix}/api/v1/deployments` with a State Manifest (ETag = the digest of
its bytes, `304` to a matching `If-None-Match`), and the content-addressed documents and
bundle the manifest names. Tests publish documents, then read the request log; they may
also serve raw manifests or replace any body (a tampered document).

Not the devkit's `WfmSimulator`, on purpose: that one keeps the manifest and the bodies it
serves consistent and asks for a client certificate; these tests need one-way TLS, bodies and
ETags that disagree with the manifest, old documents still served and bundle-less manifests.
The server itself (life, request log, TLS) is the devkit's `SimServer`.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from margo_lite.devkit.simserver import SimHandler, SimServer
from margo_lite.devkit.wfmsim import BUNDLE_TYPE, MANIFEST_TYPE, digest, make_bundle
from tests.support.testca import TestCA

_PROBLEM = {"Content-Type": "application/problem+json"}


class _Handler(SimHandler):
    server: Any  # its .sim is the WfmServer

    def answer(self, path: str, body: bytes) -> tuple[str, int, dict[str, str], bytes]:
        owner = self.server.sim
        if not path.startswith(owner.prefix + "/api/v1/"):
            return path, 404, {}, b""
        api = path[len(owner.prefix) :]
        if self.command != "GET":
            return api, 405, {}, b""
        with owner._lock:
            return (api, *owner.answer(api, self.headers.get("If-None-Match")))


class WfmServer(SimServer):
    """The desired-state endpoints of a WFM under `prefix`, over TLS from `ca`."""

    def __init__(self, ca: TestCA, prefix: str = "/wfm/margo") -> None:
        self.prefix = prefix
        self.manifest = b""
        self.etag: str | None = None  # served instead of the manifest's digest
        self.refuse: tuple[int, dict] | None = None  # (status, problem) for every request
        self.bodies: dict[str, bytes] = {}  # api path -> body
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(ca.cert_file, ca.key_file)
        super().__init__(_Handler, "127.0.0.1", 0, tls)

    @property
    def url(self) -> str:
        return self.origin + self.prefix

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
                "mediaType": BUNDLE_TYPE,
                "digest": digest(archive),
                "sizeBytes": len(archive),
                "url": f"/api/v1/bundles/{digest(archive)}",
            }
            served[bundle_ref["url"]] = archive
        manifest = {"manifestVersion": version, "bundle": bundle_ref, "deployments": refs}
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        with self._lock:
            self.bodies.update(served)
            self.manifest = raw
        return raw

    def serve_manifest(self, raw: bytes) -> None:
        with self._lock:
            self.manifest = raw

    def replace(self, api_path: str, body: bytes) -> None:
        with self._lock:
            self.bodies[api_path] = body

    # --- answers (under the lock) -----------------------------------------------------------

    def answer(self, api: str, if_none_match: str | None) -> tuple[int, dict[str, str], bytes]:
        if self.refuse is not None:
            status, problem = self.refuse
            return status, _PROBLEM, json.dumps(problem).encode()
        if api == "/api/v1/deployments":
            etag = f'"{self.etag or digest(self.manifest)}"'
            if if_none_match == etag:
                return 304, {"ETag": etag}, b""
            return 200, {"ETag": etag, "Content-Type": MANIFEST_TYPE}, self.manifest
        body = self.bodies.get(api)
        if body is None:
            problem = {"type": "about:blank", "title": "Not Found", "status": 404}
            return 404, _PROBLEM, json.dumps(problem).encode()
        return 200, {"ETag": f'"{api.rsplit("/", 1)[-1]}"'}, body
