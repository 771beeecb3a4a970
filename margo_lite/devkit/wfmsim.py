"""A Margo 1.0 WFM simulator (Workload Management API rc.3) for tests and the demo.

HTTPS with mutual TLS on 127.0.0.1: it presents a WFM X.509-SVID, requires a client SVID
from the same trust bundle and recognises the client as the WFM identity profile says (its
SPIFFE ID must be `<the WFM's own ID>/client/<id>`, else 403). Under `prefix` it serves:

- `GET /api/v1/deployments`: the State Manifest (`manifestVersion`, `bundle`, `deployments`),
  ETag = the quoted digest of its bytes, `304` to a matching `If-None-Match`;
- `GET /api/v1/deployments/{id}/{digest}`, `GET /api/v1/bundles/{digest}`: the documents by
  content address (YAML), the bundle (tar+gzip, one `<id>.yaml` per deployment);
- `POST /api/v1/deployments/{id}/status`, `PUT /api/v1/capabilities/{deviceId}`: recorded,
  answered 201 the first time and 200 after; a body without the fields the schema requires
  is answered 422 problem+json.

Fault switches: `fault = "down"` (connections closed unanswered), `problem` (every answer an
RFC 9457 problem with `retryable`, `Retry-After` and `retryAfterSeconds`), `tamper`
("document" or "bundle": bytes that are not the digest's), `manifest_version` may be set
back (a rollback) or a manifest served again (`replay`), and `set_server_cert()` swaps the
certificate it presents (a WFM with the wrong SPIFFE ID). Every request is recorded with the
serial number and SPIFFE ID of the client certificate it came with; handshakes are counted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import ssl
import tarfile
import urllib.parse
from collections.abc import Mapping

from margo_lite.devkit.simserver import SimHandler, SimServer
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MANIFEST_TYPE = "application/vnd.margo.manifest.v1+json"
BUNDLE_TYPE = "application/vnd.margo.bundle.v1+tar+gzip"
PROBLEM_TYPE = "https://docs.margo.org/specification/problem-types#"
STATES = {"pending", "installing", "installed", "failed", "removing", "removed"}
_DOCUMENT = re.compile(r"^/api/v1/deployments/([^/]+)/(sha256:[0-9a-f]{64})$")
_BUNDLE = re.compile(r"^/api/v1/bundles/(sha256:[0-9a-f]{64})$")
_STATUS = re.compile(r"^/api/v1/deployments/([^/]+)/status$")
_CAPABILITIES = re.compile(r"^/api/v1/capabilities/(.+)$")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_bundle(files: Mapping[str, bytes]) -> bytes:
    """tar+gzip of `files` at the archive root, byte for byte the same for the same files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass
class Problem:
    """What `fault = "problem"` answers."""

    status: int = 503
    retryable: bool | None = True
    retry_after: int | None = 1  # the Retry-After header (None: not sent)
    retry_after_seconds: int | None = None  # the body's advisory field
    paths: tuple[str, ...] = ("/api/v1/",)  # answered with the problem (prefixes)


class WfmSimulator(SimServer):
    """`with WfmSimulator(cert, key, ca_file) as sim:`; `sim.url` is the `wos.url`."""

    def __init__(
        self,
        cert: str,
        key: str,
        ca_file: str,
        *,
        wfm_id: str | None = None,
        prefix: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        max_tls: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> None:
        self.ca_file = str(ca_file)
        self.max_tls = max_tls
        self.wfm_id = wfm_id
        self.prefix = prefix.rstrip("/")
        self.problem = Problem()
        self.tamper: str | None = None
        self.manifest_version = 0
        self.replay: bytes | None = None  # served instead of the current manifest
        self.deployments: dict[str, bytes] = {}
        self.capabilities: dict[str, dict] = {}
        self.handshakes = 0
        self.failed_handshakes = 0
        self._answered: set[tuple[str, str]] = set()
        super().__init__(_Handler, host, port, self._context(cert, key))

    def _context(self, cert: str, key: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = self.max_tls  # TLSv1_2: a WFM without TLS 1.3
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.ca_file)
        context.load_cert_chain(cert, key)
        return context

    def set_server_cert(self, cert: str, key: str) -> None:
        """Present another certificate from the next handshake on."""
        self._tls = self._context(cert, key)

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    # --- the desired state -------------------------------------------------------------------

    def publish(self, documents: Mapping[str, bytes | str], version: int | None = None) -> int:
        """Make `documents` (deployment id -> YAML) the whole desired state, under
        `version` (default: one above the current). Returns the manifest version."""
        with self._lock:
            self.deployments = {
                k: v.encode() if isinstance(v, str) else bytes(v) for k, v in documents.items()
            }
            self.manifest_version = self.manifest_version + 1 if version is None else version
            self.replay = None
            return self.manifest_version

    def manifest(self) -> bytes:
        """The State Manifest's exact bytes as served now."""
        with self._lock:
            if self.replay is not None:
                return self.replay
            deployments = dict(self.deployments)
            version = self.manifest_version
        refs = [
            {
                "deploymentId": dep,
                "digest": digest(data),
                "sizeBytes": len(data),
                "url": f"/api/v1/deployments/{urllib.parse.quote(dep, safe='')}/{digest(data)}",
            }
            for dep, data in sorted(deployments.items())
        ]
        bundle = None
        if deployments:
            archive = self.bundle()
            bundle = {
                "mediaType": BUNDLE_TYPE,
                "digest": digest(archive),
                "sizeBytes": len(archive),
                "url": f"/api/v1/bundles/{digest(archive)}",
            }
        body = {"manifestVersion": version, "bundle": bundle, "deployments": refs}
        return json.dumps(body, sort_keys=True).encode()

    def bundle(self) -> bytes:
        with self._lock:
            files = {f"{dep}.yaml": data for dep, data in self.deployments.items()}
        return make_bundle(files)

    # --- what it saw -----------------------------------------------------------------------

    def statuses(self, deployment_id: str | None = None) -> list[dict]:
        """Bodies of the status reports accepted (200/201), in the order received."""
        found = []
        for r in self.requests("/api/v1/deployments/", "POST"):
            match = _STATUS.match(r.path)
            if not match or r.answer not in (200, 201):
                continue
            if deployment_id is None or urllib.parse.unquote(match.group(1)) == deployment_id:
                found.append(r.json())
        return found

    def _created(self, key: tuple[str, str]) -> int:
        with self._lock:
            known = key in self._answered
            self._answered.add(key)
        return 200 if known else 201


class _Handler(SimHandler):
    server: Any  # its .sim is the WfmSimulator

    def handshake(self) -> bool:
        sim = self.server.sim
        conn: Any = self.connection
        try:
            conn.do_handshake()
        except (ssl.SSLError, OSError):
            with sim._lock:
                sim.failed_handshakes += 1
            return False
        with sim._lock:
            sim.handshakes += 1
        peer = conn.getpeercert() or {}
        serial = peer.get("serialNumber")
        self.client_serial = int(serial, 16) if serial else None
        uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
        self.client_id = uris[0] if len(uris) == 1 else None
        self.tls_version = conn.version()
        return True

    def answer(self, path: str, body: bytes) -> tuple[str, int, dict[str, str], bytes]:
        sim = self.server.sim
        if sim.prefix and not path.startswith(sim.prefix + "/"):
            return path, *_problem(404, "not-found", "Not found", "outside the prefix")
        path = path[len(sim.prefix) :]
        return path, *self._route(sim, path, body)

    def _route(self, sim: WfmSimulator, path: str, body: bytes) -> tuple[int, dict, bytes]:
        own = sim.wfm_id
        if own and (self.client_id or "").rpartition("/client/")[0] != own:
            return _problem(403, "forbidden", "Forbidden", "not a client of this WFM")
        problem = sim.problem
        if sim.fault == "problem" and any(path.startswith(p) for p in problem.paths):
            extra = {"retryable": problem.retryable} if problem.retryable is not None else {}
            if problem.retry_after_seconds is not None:
                extra["retryAfterSeconds"] = problem.retry_after_seconds
            status, headers, data = _problem(
                problem.status, "unavailable", "Service unavailable", "simulated fault", extra
            )
            if problem.retry_after is not None:
                headers["Retry-After"] = str(problem.retry_after)
            return status, headers, data
        method = self.command
        if path == "/api/v1/deployments" and method == "GET":
            return self._manifest(sim)
        match = _DOCUMENT.match(path)
        if match and method == "GET":
            dep, want = urllib.parse.unquote(match.group(1)), match.group(2)
            data = sim.deployments.get(dep)
            if data is None or digest(data) != want:
                return _problem(404, "not-found", "Not found", "no such document")
            if sim.tamper == "document":
                data = data + b"\n# tampered\n"
            return 200, {"Content-Type": "application/yaml", "ETag": f'"{want}"'}, data
        match = _BUNDLE.match(path)
        if match and method == "GET":
            archive = sim.bundle()
            if digest(archive) != match.group(1):
                return _problem(404, "not-found", "Not found", "no such bundle")
            if sim.tamper == "bundle":
                archive = archive[:-1] + bytes([archive[-1] ^ 1])
            return 200, {"Content-Type": BUNDLE_TYPE, "ETag": f'"{match.group(1)}"'}, archive
        match = _STATUS.match(path)
        if match and method == "POST":
            dep = urllib.parse.unquote(match.group(1))
            wrong = _check_status(body, dep)
            if wrong:
                return _problem(422, "invalid-request", "Invalid status", wrong)
            return sim._created(("status", dep)), {}, b""
        match = _CAPABILITIES.match(path)
        if match and method == "PUT":
            device = urllib.parse.unquote(match.group(1))
            try:
                document = json.loads(body)
            except ValueError:
                return _problem(400, "invalid-request", "Malformed", "body is not JSON")
            if not isinstance(document, dict) or not isinstance(document.get("properties"), dict):
                return _problem(422, "invalid-request", "Invalid capabilities", "no properties")
            with sim._lock:
                sim.capabilities[device] = document
            return sim._created(("capabilities", device)), {}, b""
        return _problem(404, "not-found", "Not found", "no such endpoint")

    def _manifest(self, sim: WfmSimulator) -> tuple[int, dict, bytes]:
        data = sim.manifest()
        etag = f'"{digest(data)}"'
        if self.headers.get("If-None-Match") == etag:
            return 304, {"ETag": etag}, b""
        headers = {"Content-Type": MANIFEST_TYPE, "ETag": etag, "Cache-Control": "private"}
        return 200, headers, data


def _problem(
    status: int, kind: str, title: str, detail: str, extra: Mapping[str, Any] | None = None
) -> tuple[int, dict, bytes]:
    body = {"type": PROBLEM_TYPE + kind, "title": title, "status": status, "detail": detail}
    body.update(extra or {})
    return status, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()


def _check_status(body: bytes, deployment_id: str) -> str | None:
    """What is wrong with a DeploymentStatusManifest (the fields the schema requires)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if not isinstance(doc, dict):
        return "body must be an object"
    missing = {"deploymentId", "adoptedManifestVersion", "status", "components"} - set(doc)
    if missing:
        return f"missing {sorted(missing)}"
    if doc["deploymentId"] != deployment_id:
        return "deploymentId is not the path's"
    status = doc["status"]
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return "status.state must be one of " + ", ".join(sorted(STATES))
    for item in doc["components"] if isinstance(doc["components"], list) else [None]:
        if not isinstance(item, dict) or item.get("state") not in STATES:
            return "every component needs a name and a lower-case state"
    return None
