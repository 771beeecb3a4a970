"""A WOS simulator: the Device API side of the contract, for tests and `margo-lite demo`.

A small threaded HTTP(S) server on 127.0.0.1 implementing the token endpoint (OAuth2 client
credentials), onboarding (`GET /onboarding/certificate`, `POST /onboarding/`), capabilities
(`POST`/`PUT /device/{id}/capabilities`) and status (`POST
/device/{id}/deployment/{deploymentId}/status`). It records every request it receives and
can be told to fail: `fault` = "down" (connections are closed unanswered), "slow" (answers
after `slow_seconds`) or an HTTP status such as "500" or "401" (every answer).

The agent never imports this module; only tests, `margo-lite demo` and
`python -m margo_lite.devkit.wossim` do.

Onboarding answer (margo-lite's decision, the specification leaves it open)::

    {"clientId": "...", "clientSecret": "...", "tokenUrl": "https://wos/oauth/token",
     "git": {"url": "https://git/dev.git", "username": "...", "token": "...",
             "branch": "main", "path": ""}}
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from margo_lite.devkit.simserver import SimHandler, SimServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TOKEN_PATH = "/oauth/token"
STATES = {"Pending", "Installing", "Installed", "Failed", "Removing", "Removed"}
_STATUS = re.compile(r"^/device/([^/]+)/deployment/([^/]+)/status$")
_CAPABILITIES = re.compile(r"^/device/([^/]+)/capabilities$")


class WosSimulator(SimServer):
    """Start with `with WosSimulator(...) as sim:`; `sim.url` is the Device API base URL."""

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_lifetime: float = 3600.0,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        ca_pem: bytes | None = None,
        git: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.ca_pem = ca_pem
        self.git = dict(git or {})
        self.slow_seconds = 2.0
        self.capabilities: dict[str, dict] = {}
        self.onboarded: list[dict] = []
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            if client_ca:  # mutual TLS: a client certificate from this CA is required
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
        super().__init__(_Handler, host, port, context)

    @property
    def url(self) -> str:
        return self.origin

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    # --- what it saw -----------------------------------------------------------------------

    def statuses(self, deployment_id: str | None = None) -> list[dict]:
        """Bodies of the status reports accepted (201), in the order received."""
        found = []
        for r in self.requests("/device/", "POST"):
            match = _STATUS.match(r.path)
            if not match or r.answer != 201:
                continue
            if deployment_id is None or urllib.parse.unquote(match.group(2)) == deployment_id:
                found.append(r.json())
        return found

    def token_requests(self) -> int:
        return len([r for r in self.requests(TOKEN_PATH) if r.answer == 200])

    def revoke_tokens(self) -> None:
        """Forget every token issued, as a WOS does when they expire on its side."""
        with self._lock:
            self._tokens.clear()

    def issue_token(self) -> str:
        token = "simtok-" + secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def _token_valid(self, header: str | None) -> bool:
        if self.client_id is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(header[7:])
        return expiry is not None and time.monotonic() < expiry


class _Handler(SimHandler):
    server: Any  # its .sim is the WosSimulator

    def answer(self, path: str, body: bytes) -> tuple[str, int, dict[str, str], bytes]:
        sim = self.server.sim
        fault = sim.fault
        if fault == "slow":
            sim._stopping.wait(sim.slow_seconds)
        if fault and fault.isdigit():
            status, answer = int(fault), {"error": f"simulated fault {fault}"}
        else:
            status, answer = self._route(sim, path, body)
        return path, status, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    def _route(self, sim: WosSimulator, path: str, body: bytes) -> tuple[int, Any]:
        method = self.command
        if path == TOKEN_PATH and method == "POST":
            return self._token(sim, body)
        if path == "/onboarding/certificate" and method == "GET":
            if sim.ca_pem is None:
                return 404, {"error": "no certificate"}
            return 200, {"certificate": base64.b64encode(sim.ca_pem).decode()}
        if path in ("/onboarding/", "/onboarding") and method == "POST":
            return self._onboard(sim, body)
        status = _STATUS.match(path)
        caps = _CAPABILITIES.match(path)
        if not status and not caps:
            return 404, {"error": "no such endpoint"}
        if not sim._token_valid(self.headers.get("Authorization")):
            return 401, {"error": "invalid_token"}
        try:
            document = json.loads(body)
        except ValueError:
            return 400, {"error": "body is not JSON"}
        if status and method == "POST":
            problem = _check_status(document, urllib.parse.unquote(status.group(2)))
            return (400, {"error": problem}) if problem else (201, {})
        if caps and method in ("POST", "PUT"):
            device = urllib.parse.unquote(caps.group(1))
            if not isinstance(document, dict) or document.get("kind") != "DeviceCapabilities":
                return 400, {"error": "kind must be DeviceCapabilities"}
            with sim._lock:
                known = device in sim.capabilities
                if method == "POST" and known:
                    return 409, {"error": "capabilities exist; use PUT"}
                if method == "PUT" and not known:
                    return 404, {"error": "no capabilities yet; use POST"}
                sim.capabilities[device] = document
            return 201, {}
        return 405, {"error": "method not allowed"}

    def _token(self, sim: WosSimulator, body: bytes) -> tuple[int, Any]:
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        given = {key: values[0] for key, values in form.items()}
        if given.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if (
            sim.client_id is None
            or given.get("client_id") != sim.client_id
            or given.get("client_secret") != sim.client_secret
        ):
            return 401, {"error": "invalid_client"}
        token = sim.issue_token()
        return 200, {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(sim.token_lifetime),
        }

    def _onboard(self, sim: WosSimulator, body: bytes) -> tuple[int, Any]:
        try:
            request = json.loads(body)
        except ValueError:
            return 400, {"error": "body is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("deviceId"), str):
            return 400, {"error": "deviceId is required"}
        with sim._lock:
            sim.onboarded.append(request)
        return 201, {
            "clientId": sim.client_id,
            "clientSecret": sim.client_secret,
            "tokenUrl": sim.token_url,
            "git": sim.git,
        }


def _check_status(document: Any, deployment_id: str) -> str | None:
    """What is wrong with a DeploymentStatus body (contract §4), or None."""
    if not isinstance(document, dict):
        return "body must be an object"
    if set(document) != {"apiVersion", "kind", "deploymentId", "status", "components"}:
        return f"unexpected fields {sorted(document)}"
    if document["apiVersion"] != "deployment.margo/v1" or document["kind"] != "DeploymentStatus":
        return "apiVersion/kind"
    if document["deploymentId"] != deployment_id:
        return "deploymentId does not match the URL"
    status = document["status"]
    if not isinstance(status, dict) or set(status) != {"state", "error"}:
        return "status must hold state and error"
    states = STATES | {s.lower() for s in STATES}
    if status["state"] not in states:
        return f"unknown state {status['state']!r}"
    error = status["error"]
    if not isinstance(error, dict) or set(error) != {"code", "message"}:
        return "status.error must hold code and message"
    components = document["components"]
    if not isinstance(components, list) or not all(
        isinstance(c, dict) and set(c) == {"name", "state"} and c["state"] in states
        for c in components
    ):
        return "components must be a list of {name, state}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground; one JSON line per request on stdout."""
    parser = argparse.ArgumentParser(prog="python -m margo_lite.devkit.wossim", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret-file")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--ca-file", help="root CA served at /onboarding/certificate")
    parser.add_argument("--git-url")
    parser.add_argument("--git-token-file")
    args = parser.parse_args(argv)
    secret = Path(args.client_secret_file).read_text().strip() if args.client_secret_file else None
    git = {"url": args.git_url} if args.git_url else {}
    if args.git_token_file:
        git["token"] = Path(args.git_token_file).read_text().strip()
    sim = WosSimulator(
        client_id=args.client_id,
        client_secret=secret,
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        ca_pem=Path(args.ca_file).read_bytes() if args.ca_file else None,
        git=git,
        port=args.port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sim:
        print(json.dumps({"listening": sim.url}), flush=True)
        shown = 0
        while not stop.wait(0.2):
            for r in sim.requests()[shown:]:
                shown += 1
                line = {"method": r.method, "path": r.path, "answer": r.answer}
                if r.path.startswith("/device/"):
                    line["body"] = r.json() if r.body else None
                print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
