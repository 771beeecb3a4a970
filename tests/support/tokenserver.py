"""A tiny token service (distribution token spec) on 127.0.0.1 over TLS, for the registry.

It answers `GET /token?service=...&scope=repository:<name>:<actions>` with a JWT (RS256)
signed by a key whose certificate the test CA issued, the certificate in the token's `x5c`
header: exactly what `docker-registry` with `auth: token` checks against its
`rootcertbundle`. Users and passwords are checked with HTTP basic auth; with
`anonymous=True` a request without credentials gets a pull-only token. Signing uses the
`openssl` CLI.
"""

from __future__ import annotations

import base64
import collections
import http.server
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from tests.support.testca import TestCA

SERVICE = "margo-lite-test-registry"
ISSUER = "margo-lite-test-token-service"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, cwd: Path, data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, input=data, check=True, capture_output=True, timeout=60
    )
    return done.stdout


class TokenServer:
    """Issues registry tokens; `requests` lists (user or None, scope) of every token asked."""

    def __init__(
        self, folder: Path, ca: TestCA, users: dict[str, str], *, anonymous: bool = False
    ) -> None:
        self.folder = folder
        self.ca = ca
        self.users = users
        self.anonymous = anonymous
        self.requests: list[tuple[str | None, str]] = []
        self.answers: collections.Counter[int] = collections.Counter()
        self.fail_next: list[int] = []  # statuses to answer first, one per request
        self._server: http.server.ThreadingHTTPServer | None = None

    def registry_config(self) -> dict:
        return {
            "realm": f"{self.url}/token",
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(self.ca.ca_file),
        }

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> TokenServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        ca_key = self.ca.ca_file.parent / "ca.key"
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "signer.key", "-out", "signer.csr",
            "-subj", "/CN=margo-lite test token signer", cwd=self.folder,
        )  # fmt: skip
        (self.folder / "signer.ext").write_text("keyUsage=critical,digitalSignature\n")
        _openssl(
            "x509", "-req", "-in", "signer.csr", "-CA", str(self.ca.ca_file), "-CAkey",
            str(ca_key), "-CAcreateserial", "-out", "signer.pem", "-days", "3",
            "-extfile", "signer.ext", cwd=self.folder,
        )  # fmt: skip
        der = _openssl("x509", "-in", "signer.pem", "-outform", "DER", cwd=self.folder)
        self._x5c = base64.b64encode(der).decode()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:
                status, body = owner._answer(self.path, self.headers.get("Authorization"))
                owner.answers[status] += 1
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca.cert_file, self.ca.key_file)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict]:
        if self.fail_next:
            return self.fail_next.pop(0), {"errors": [{"code": "UNAVAILABLE"}]}
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        scopes = query.get("scope", [])
        user = None
        if authorization and authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(user) != password:
                self.requests.append((user, " ".join(scopes)))
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad password"}]}
        self.requests.append((user, " ".join(scopes)))
        if user is None and not self.anonymous:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "credentials needed"}]}
        if query.get("service") != [SERVICE]:
            return 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]}
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")  # repository:<name>:pull,push
            allowed = actions.split(",") if user else ["pull"]
            access.append({"type": kind, "name": name, "actions": allowed})
        return 200, {"token": self._sign(user or "", access), "expires_in": 300}

    def _sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = _openssl(
            "dgst", "-sha256", "-sign", "signer.key", cwd=self.folder, data=signing_input.encode()
        )
        return f"{signing_input}.{_b64(signature)}"
