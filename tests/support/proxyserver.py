"""A real forward proxy for tests: Debian's squid on 127.0.0.1, private config, port and log.

    with ForwardProxy(tmp, auth=("alice", "s3cret")) as proxy:
        ...  # network.proxy: proxy.url("alice")
        proxy.entries(port=git_server.port)       # what squid logged for that server

squid answers a missing or wrong password with 407 (for forwarded requests and CONNECT
alike) and logs one line per request it handled (a CONNECT tunnel as one line, when it
closes). Nothing of the machine's own squid is used: the config, the password file and
the logs live in a folder of their own, and loopback is not excluded (squid's shipped
config denies `to_localhost`; ours does not), so requests to 127.0.0.1 really go through.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.engines import free_port
from tests.support.wait import wait_for

SQUID = "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
SQUID_USER = "proxy"  # Debian's squid drops root for this user: its files must be its own

CONFIG = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
cache_store_log none
cache deny all
cache_mem 4 MB
coredump_dir {dir}
shutdown_lifetime 0 seconds
forwarded_for delete
via off
acl local_clients src 127.0.0.1/32
http_access deny !local_clients
{auth}
"""

AUTH = """\
auth_param basic program {helper} {dir}/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm margo-lite test proxy
acl authed proxy_auth REQUIRED
http_access allow authed
http_access deny all
"""


@dataclass(frozen=True)
class Entry:
    """One line of squid's access log."""

    status: int
    size: int  # bytes squid sent to the client
    method: str
    url: str  # absolute URL for forwarded requests, host:port for CONNECT
    user: str  # "-" when none


class ForwardProxy:
    """squid on 127.0.0.1:port; with `auth` (user, password) it requires basic auth."""

    squid = SQUID

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.port = free_port()
        # A folder of its own in /tmp: squid's user must reach it, which a pytest tmp_path
        # (below a root-only folder) does not allow.
        self.dir = Path(tempfile.mkdtemp(prefix="margo-lite-proxy-"))
        self._process: subprocess.Popen | None = None
        self._stderr = None

    def url(self, user: str | None = None) -> str:
        return f"http://{user + '@' if user else ''}127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        auth = ""
        if self.auth is not None:
            user, password = self.auth
            hashed = subprocess.run(
                ["openssl", "passwd", "-apr1", "-stdin"],
                input=password, capture_output=True, text=True, check=True, timeout=30,
            ).stdout.strip()  # fmt: skip
            (self.dir / "passwd").write_text(f"{user}:{hashed}\n")
            auth = AUTH.format(helper=NCSA_AUTH, dir=self.dir)
        else:
            auth = "http_access allow local_clients\nhttp_access deny all\n"
        (self.dir / "squid.conf").write_text(CONFIG.format(port=self.port, dir=self.dir, auth=auth))
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SQUID_USER)
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._stderr = open(self.dir / "stderr.log", "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            [SQUID, "-N", "-f", str(self.dir / "squid.conf")],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,
        )
        wait_for(self._accepting, timeout=60, what="squid to accept connections")
        return self

    def _accepting(self) -> bool:
        assert self._process is not None and self._process.poll() is None, self._tail()
        log = self.dir / "cache.log"
        return log.exists() and "Accepting HTTP Socket connections" in log.read_text()

    def _tail(self) -> str:
        texts = [p.read_text(errors="replace") for p in self.dir.glob("*.log") if p.is_file()]
        return "squid exited: " + "\n".join(t[-2000:] for t in texts)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # squid -N: stop now
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)
        if self._stderr is not None:
            self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what it logged --------------------------------------------------------------------

    def entries(self, port: int | None = None) -> list[Entry]:
        """Every request squid handled (to 127.0.0.1:`port` only, when given)."""
        log = self.dir / "access.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            fields = line.split()
            if len(fields) < 8:
                continue
            status = int(fields[3].rpartition("/")[2] or 0)
            entry = Entry(status, int(fields[4]), fields[5], fields[6], fields[7])
            if port is None or f"127.0.0.1:{port}" in entry.url:
                found.append(entry)
        return found

    def log_text(self) -> str:
        log = self.dir / "access.log"
        return log.read_text() if log.exists() else ""
