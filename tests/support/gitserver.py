"""A real smart-HTTP Git server for tests: C git's `git http-backend` behind a small bridge.

The bridge listens on 127.0.0.1 only, runs `git http-backend` as a CGI program for each
request, and in front of it checks credentials (basic or bearer), optionally speaks TLS
with a test CA made by `openssl`, counts requests and bytes in both directions, and can be
switched into faults (HTTP 401/403/404/500, a stall past the client's timeout, a dropped
connection, an answer cut short or corrupted), or made to speak only protocol v0.
`refused_url()` gives a URL where nothing listens (connection refused).

    with GitServer(root) as server:               # repositories are folders under root
        server.auth = BearerAuth("tok")           # or BasicAuth("user", "pw"), or None
        url = server.url("dev.git")
        server.reset_counters(); ...; server.requests, server.bytes_sent
        server.fault = Fault.STALL                # until set back to None
        server.fault_skip = 1                     # ... but let the next request through

    upstream = Upstream(root / "dev.git")         # a bare repository, committed to by C git
    sha = upstream.commit({"apps/a.yaml": DEPLOYMENT.format(n=1)})   # None deletes a file
    upstream.set_branch(old_sha); upstream.delete_branch(); upstream.add_refs(2000)
    ca = make_test_ca(folder); GitServer(root, tls=ca); GitConfig(ca_file=str(ca.ca_cert))
"""

from __future__ import annotations

import base64
import enum
import hmac
import http.server
import os
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

GIT = "git"
STALL_LIMIT = 30.0  # a stalled request is held at most this long (or until the server stops)


# A Margo ApplicationDeployment, numbered by `n`, as desired-state content for tests.
DEPLOYMENT = """\
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: ad9b614e-8912-45f4-a523-37235876{n:04d}
    applicationId: app-{n}
  name: app-{n}-deployment
  namespace: margo-poc
spec:
  deploymentProfile:
    type: docker-compose
    components:
      - name: app-{n}
        properties:
          packageLocation: https://example.com/app-{n}/docker/app.tar.gz
  parameters:
    siteId:
      value: SID-{n}
      targets:
        - pointer: ENV.SITE_ID
          components: [app-{n}]
"""


class Fault(enum.Enum):
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    SERVER_ERROR = 500
    STALL = "stall"  # read the request, then send nothing until released
    DROP = "drop"  # read the request, then close the connection without an answer
    TRUNCATE = "truncate"  # announce the full length, send half of the body, close
    CORRUPT = "corrupt"  # flip one byte in the middle of the body (inside a pack's data)


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    def accepts(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return hmac.compare_digest(header.encode(), f"Basic {expected}".encode())


@dataclass(frozen=True)
class BearerAuth:
    token: str

    def accepts(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    bytes_received: int
    bytes_sent: int
    git_protocol: str


@dataclass(frozen=True)
class TlsFiles:
    """Files of a test certificate authority and a server certificate for 127.0.0.1."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_ca(folder: Path, *, hostname: str = "localhost") -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 / `hostname`, made by `openssl`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:{hostname}\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2",
        "-subj", "/CN=margo-lite test CA")  # fmt: skip
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hostname}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return TlsFiles(ca_cert, cert, key)


def refused_url(path: str = "dev.git") -> str:
    """An http URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


class _CountingReader:
    def __init__(self, raw, counter) -> None:
        self._raw, self._counter = raw, counter

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._counter(len(data))
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._raw.readline(limit)
        self._counter(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._raw, name)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._received = 0
        self.rfile = _CountingReader(self.rfile, self._count_in)

    def _count_in(self, n: int) -> None:
        self._received += n

    def log_message(self, format: str, *args) -> None:  # quiet: tests read counters instead
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        fault, auth = owner._next_fault(), owner.auth
        if auth is not None and not auth.accepts(self.headers.get("Authorization", "")):
            status, headers, payload = 401, {"WWW-Authenticate": 'Basic realm="git"'}, b""
        elif isinstance(fault, Fault) and isinstance(fault.value, int):
            status, headers, payload = fault.value, {}, b"fault\n"
        elif fault in (Fault.STALL, Fault.DROP):
            self._record(0, 0)
            if fault is Fault.STALL:
                owner._release.wait(STALL_LIMIT)
            self.close_connection = True
            return
        else:
            status, headers, payload = self._cgi(body)
        if fault is Fault.CORRUPT and payload:
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        data = self._response(status, headers, payload, truncate=fault is Fault.TRUNCATE)
        self._record(status, len(data))  # before sending: a client may check counters at once
        self.wfile.write(data)
        self.wfile.flush()

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _cgi(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_USER": "device",
            "HOME": str(self.server.owner.root),
        }
        if self.headers.get("Git-Protocol") and self.server.owner.protocol_v2:
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run(
            [GIT, "http-backend"], input=body, capture_output=True, env=env, timeout=120
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name] = value.strip()
        return status, headers, payload

    def _response(
        self, status: int, headers: dict[str, str], payload: bytes, truncate: bool
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(len(payload))
        if truncate:
            headers["Connection"] = "close"
            payload = payload[: len(payload) // 2]
            self.close_connection = True
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload

    def _record(self, status: int, sent: int) -> None:
        self.server.owner._add(
            Request(
                self.command,
                self.path,
                status,
                self._received,
                sent,
                self.headers.get("Git-Protocol", ""),
            )
        )
        self._received = 0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: GitServer


class GitServer:
    """Serves every repository folder below `root` at http(s)://127.0.0.1:PORT/<name>."""

    def __init__(self, root: Path, *, tls: TlsFiles | None = None) -> None:
        self.root = Path(root)
        self.auth: BasicAuth | BearerAuth | None = None
        self.fault: Fault | None = None
        self.fault_skip = 0  # requests let through before `fault` applies
        self.protocol_v2 = True  # False: behave as a server that speaks protocol v0 only
        self._lock = threading.Lock()
        self._log: list[Request] = []
        self._release = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> GitServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def url(self, name: str = "dev.git", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/{name}"

    def release_stalled(self) -> None:
        """Let stalled requests end now (they also end when the server stops)."""
        self._release.set()
        self._release = threading.Event()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self.fault is not None and self.fault_skip > 0:
                self.fault_skip -= 1
                return None
            return self.fault

    # --- counters ------------------------------------------------------------------------

    def _add(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)

    def reset_counters(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def log(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def bytes_sent(self) -> int:
        return sum(r.bytes_sent for r in self.log)

    @property
    def bytes_received(self) -> int:
        return sum(r.bytes_received for r in self.log)


class Upstream:
    """A bare repository the tests commit to with C git plumbing (no working tree)."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = Path(path)
        self.branch = branch
        self.env = {
            "GIT_AUTHOR_NAME": "WOS",
            "GIT_AUTHOR_EMAIL": "wos@example.com",
            "GIT_COMMITTER_NAME": "WOS",
            "GIT_COMMITTER_EMAIL": "wos@example.com",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.path),
        }
        if not (self.path / "HEAD").exists():
            self.git("init", "-q", "--bare", "-b", branch, str(self.path), cwd=self.path.parent)
        # http-backend answers only with uploadpack settings it knows; keep the defaults.

    def git(self, *args: str, input: bytes | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> str:  # fmt: skip
        full_env = {**os.environ, **self.env, **(env or {})}
        if cwd is None:
            full_env["GIT_DIR"] = str(self.path)
        proc = subprocess.run(
            [GIT, *args], input=input, capture_output=True, env=full_env,
            cwd=cwd or self.path, timeout=60,
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode().strip()

    def tip(self, branch: str | None = None) -> str | None:
        ref = f"refs/heads/{branch or self.branch}"
        try:
            return self.git("rev-parse", "--verify", "-q", ref)
        except RuntimeError:
            return None

    def commit(
        self,
        files: dict[str, bytes | str | None],
        message: str = "change",
        *,
        branch: str | None = None,
        orphan: bool = False,
        sign_env: dict[str, str] | None = None,
        sign_key: str | None = None,
    ) -> str:
        """Commit `files` (path -> content; None deletes) on top of the branch tip.

        `orphan` starts a history of its own, with only these files. With `sign_key`, the
        commit is signed by gpg using `sign_env` (GNUPGHOME).
        """
        branch = branch or self.branch
        parent = None if orphan else self.tip(branch)
        index = self.path / f"index.{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent:
                self.git("read-tree", parent, env=env)
            else:
                self.git("read-tree", "--empty", env=env)
            lines = []
            for name, content in files.items():
                if content is None:
                    lines.append(f"0 {'0' * 40}\t{name}")
                    continue
                data = content.encode() if isinstance(content, str) else content
                blob = self.git("hash-object", "-w", "--stdin", input=data)
                lines.append(f"100644 {blob}\t{name}")
            self.git("update-index", "--index-info", input="\n".join(lines).encode(), env=env)
            tree = self.git("write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        args = ["commit-tree", tree, "-m", message]
        if parent:
            args += ["-p", parent]
        if sign_key:
            args.insert(1, f"-S{sign_key}")
        sha = self.git(*args, env=sign_env)
        self.git("update-ref", f"refs/heads/{branch}", sha)
        return sha

    def set_branch(self, sha: str, branch: str | None = None) -> None:
        """Point the branch at `sha` (a force-push, as the server sees it)."""
        self.git("update-ref", f"refs/heads/{branch or self.branch}", sha)

    def delete_branch(self, branch: str | None = None) -> None:
        self.git("update-ref", "-d", f"refs/heads/{branch or self.branch}")

    def add_refs(self, count: int, prefix: str = "refs/heads/extra/") -> None:
        """`count` more refs pointing at the tip (a repository busy with other branches)."""
        tip = self.tip()
        lines = "".join(f"create {prefix}{i:05d} {tip}\n" for i in range(count))
        self.git("update-ref", "--stdin", input=lines.encode())
        self.git("pack-refs", "--all")
