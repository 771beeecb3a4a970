"""Git's smart HTTP protocol on urllib3: v2 `ls-refs` and `fetch` (one POST each), or v0.

Built here instead of going through dulwich's HTTP client, because that client differs
between dulwich 0.21.2 and newer releases (v0 only vs. v2 with an extra discovery request
per call, dict vs. result object, shallow handling) and sets no timeouts. Every request has
a connect and read timeout, at most one more connection attempt and no read retries; every
answer has a size bound; every failure is a typed error naming the (sanitized) URL.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import urllib3

from margo_lite import logs, pools, proxy
from margo_lite.constants import USER_AGENT
from margo_lite.errors import GitError, GitTransientError, ProxyError, SourceError
from margo_lite.git import pktline
from margo_lite.git.pktline import HEX40
from margo_lite.pools import Pools, short_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dulwich.object_store import PackBasedObjectStore

MAX_PACK_BYTES = 256 << 20  # one fetch
SPOOL_IN_MEMORY = 4 << 20  # a downloaded pack larger than this goes to a file in `spool`
MAX_REFS_BYTES = 1 << 20  # one ls-refs answer (it names one branch; anything near this is wrong)
MAX_ADVERTISEMENT_BYTES = 16 << 20  # a protocol v0 server names every ref of the repository

log = logs.get(__name__)


class HttpRemote:
    """The Git smart HTTP protocol: v2 (`ls-refs` and `fetch`, one POST each), or v0 for
    servers that only speak that (the ref advertisement GET, and one POST to fetch).

    The first poll asks for the server's capabilities (a GET); later polls reuse them, and
    so does a new process given them as `known` (`protocol` is what to keep). Capabilities
    that no longer fit the server are asked for again, once, within the same poll.
    Connections are closed after each poll, so nothing lingers between polls.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None,
        timeout: float,
        proxies: proxy.Settings = proxy.DIRECT,
        known: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._shown = logs.sanitize_url(url)
        retries = urllib3.Retry(
            total=1, connect=1, read=0, redirect=0, status=0, other=0, raise_on_status=False
        )
        self._pool = Pools(
            proxies,
            num_pools=2,
            retries=retries,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            ca_file=ca_file,
        )
        self._authorization: str | None = None
        self._capabilities: dict[bytes, bytes] | None = dict(known) if known else None
        self._version = 2
        self._unconfirmed = bool(known)  # noted by an earlier process, not yet used here

    @property
    def protocol(self) -> dict[bytes, bytes] | None:
        """The protocol v2 capabilities in use, to give a later process as `known`."""
        return dict(self._capabilities) if self._capabilities and self._version == 2 else None

    def authorize(self, header: str | None) -> None:
        self._authorization = header

    def close(self) -> None:
        self._pool.clear()

    def tip(self, branch: str) -> str | None:
        try:
            found = self._tip(branch)
        except (GitError, GitTransientError) as exc:
            if not self._unconfirmed or exc.code not in _STALE_CAPABILITIES:
                raise
            log.info("%s answers differently than before (%s); asking again", self._shown, exc)
            self._unconfirmed = False
            self._capabilities = None
            found = self._tip(branch)
        self._unconfirmed = False
        return found

    def _tip(self, branch: str) -> str | None:
        ref = f"refs/heads/{branch}".encode()
        if self._capabilities is None or self._version == 0:
            advertised = self._discover()
            if advertised is not None:  # protocol v0: the GET named every ref
                return advertised.get(ref)
        caps = self._capabilities or {}
        body = self._command(b"ls-refs", caps, [b"ref-prefix " + ref + b"\n"])
        with self._post(body) as resp:
            found = None
            for line in pktline.pkt_lines(pktline.Reader(resp, MAX_REFS_BYTES, self._shown)):
                if line in (pktline.DELIM, pktline.END):
                    raise pktline.protocol_error(self._shown, "unexpected delimiter in ls-refs")
                if line == pktline.FLUSH:
                    return found
                oid, _, rest = line.rstrip(b"\n").partition(b" ")
                if rest.split(b" ")[0] == ref and HEX40.match(oid):
                    found = oid.decode()
            raise pktline.protocol_error(self._shown, "ls-refs answer ends early")

    def fetch_into(
        self,
        store: PackBasedObjectStore,
        want: str,
        held: str | None,
        shallow: set[str],
        spool: Path,
    ) -> None:
        """`Remote.fetch_into`: the pack is spooled (in memory, or in `spool` when large),
        then added to `store` as a thin pack."""
        import tempfile  # a fetch runs in a forked child: a poll never loads it

        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=spool) as data:
            self.fetch(want, held, shallow, data.write)
            if not data.tell():
                return
            data.seek(0)
            try:
                store.add_thin_pack(data.read, None)
            except OSError:
                raise
            except Exception as exc:  # dulwich raises many types for a broken pack
                raise GitTransientError(
                    f"the pack for {want} is invalid: {type(exc).__name__}: {short_reason(exc)}",
                    code="GIT_PACK_INVALID",
                ) from exc

    def fetch(
        self, want: str, have: str | None, shallow: set[str], write: Callable[[bytes], None]
    ) -> None:
        """Fetch `want` with depth 1, telling the server what is held; the pack goes to `write`.

        The server's shallow-info is checked but not kept: with depth 1 the new shallow
        commit is `want` itself whenever it has parents, which the caller knows.
        """
        if self._capabilities is None:
            self._discover()
        caps = self._capabilities or {}
        shallow_lines = [b"shallow %s\n" % s.encode() for s in sorted(shallow)]
        have_lines = [b"have %s\n" % have.encode()] if have else []
        if self._version == 0:
            asked = [c for c in _V0_CAPABILITIES if c in caps]
            if b"agent" in caps:
                asked.append(b"agent=" + USER_AGENT.encode())
            body = b"".join(
                map(
                    pktline.pkt,
                    [b"want %s %s\n" % (want.encode(), b" ".join(asked)), *shallow_lines,
                     b"deepen 1\n"],
                )
            )  # fmt: skip
            body += pktline.FLUSH + b"".join(map(pktline.pkt, [*have_lines, b"done\n"]))
        else:
            args = [b"thin-pack\n", b"ofs-delta\n", b"no-progress\n", b"deepen 1\n"]
            args += [*shallow_lines, b"want %s\n" % want.encode(), *have_lines, b"done\n"]
            body = self._command(b"fetch", caps, args)
        with self._post(body) as resp:
            lines = pktline.pkt_lines(pktline.Reader(resp, MAX_PACK_BYTES, self._shown))
            skip = pktline.skip_v0_head if self._version == 0 else pktline.skip_v2_sections
            first = skip(lines, self._shown)
            if first is None:
                raise pktline.pack_error(self._shown, "the answer ends before the pack")
            for line in itertools.chain((first,), lines):
                if line == pktline.FLUSH:
                    return
                if line in (pktline.DELIM, pktline.END) or not line:
                    raise pktline.pack_error(self._shown, "unexpected packet in the pack stream")
                band, data = line[0], line[1:]
                if band == 1:
                    write(data)
                elif band == 3:
                    raise GitTransientError(
                        f"{self._shown}: server error: {pktline.printable(data)}",
                        code="GIT_SERVER_ERROR",
                    )
            raise pktline.pack_error(self._shown, "the pack was cut short")

    def _discover(self) -> dict[bytes, str] | None:
        """Learn the server's protocol and capabilities; for v0, return the refs it named."""
        url = f"{self._url}/info/refs?service=git-upload-pack"
        with self._request("GET", url, None, {"Accept": "*/*"}) as resp:
            lines = pktline.pkt_lines(pktline.Reader(resp, MAX_ADVERTISEMENT_BYTES, self._shown))
            first = next(lines, pktline.FLUSH)
            if first.startswith(b"# service="):  # v0, and some v2 servers, start with this
                next(lines, None)
                first = next(lines, pktline.FLUSH)
            if first.rstrip(b"\n") == b"version 2":
                caps, refs = {}, None
                for line in lines:
                    if line == pktline.FLUSH:
                        break
                    key, _, value = line.rstrip(b"\n").partition(b"=")
                    caps[key] = value
                version = 2
                usable = b"ls-refs" in caps and b"shallow" in caps.get(b"fetch", b"").split()
            else:
                caps, refs = pktline.parse_advertisement(first, lines, self._shown)
                if not refs:  # an empty repository: v0 servers send no capabilities then
                    return refs
                version = 0
                usable = all(c in caps for c in (b"shallow", b"side-band-64k"))
        if not usable:
            raise GitError(
                f"{self._shown} cannot serve shallow fetches", code="GIT_PROTOCOL_UNSUPPORTED"
            )
        if caps.get(b"object-format", b"sha1") != b"sha1":
            raise GitError(f"{self._shown} uses SHA-256 objects", code="GIT_PROTOCOL_UNSUPPORTED")
        self._capabilities, self._version = caps, version
        return refs

    @staticmethod
    def _command(name: bytes, caps: Mapping[bytes, bytes], args: list[bytes]) -> bytes:
        head = [b"command=%s\n" % name]
        if b"agent" in caps:
            head.append(b"agent=%s\n" % USER_AGENT.encode())
        return (
            b"".join(map(pktline.pkt, head))
            + pktline.DELIM
            + b"".join(map(pktline.pkt, args))
            + pktline.FLUSH
        )

    def _post(self, body: bytes) -> contextlib.AbstractContextManager[urllib3.HTTPResponse]:
        headers = {
            "Content-Type": "application/x-git-upload-pack-request",
            "Accept": "application/x-git-upload-pack-result",
        }
        return self._request("POST", f"{self._url}/git-upload-pack", body, headers)

    @contextlib.contextmanager
    def _request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> Iterator[urllib3.HTTPResponse]:
        headers = {**headers, "User-Agent": USER_AGENT}
        if self._version == 2 or method == "GET":
            headers["Git-Protocol"] = "version=2"
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            resp = self._pool.request(
                method, url, body=body, headers=headers, preload_content=False, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise _network_error(exc, self._shown) from exc
        except ProxyError as exc:
            raise GitTransientError(f"{self._shown}: {exc.message}", code=exc.code) from None
        try:
            _check_status(resp, self._shown)
            try:
                yield resp
            except urllib3.exceptions.HTTPError as exc:
                raise _network_error(exc, self._shown) from exc
        except SourceError:
            self._capabilities = None  # ask again next time: the server may have changed
            resp.close()  # its body is unread: never hand this connection out again
            raise
        finally:
            resp.release_conn()


# What capabilities the server no longer has may cause: worth one fresh discovery.
_STALE_CAPABILITIES = ("GIT_PROTOCOL_ERROR", "GIT_PROTOCOL_UNSUPPORTED", "GIT_SERVER_ERROR")
_V0_CAPABILITIES = (b"side-band-64k", b"thin-pack", b"ofs-delta", b"shallow", b"no-progress")


def _check_status(resp: urllib3.HTTPResponse, shown: str) -> None:
    status = resp.status
    if status == 200:
        content_type = resp.headers.get("Content-Type", "")
        if not content_type.startswith("application/x-git-"):
            raise GitError(
                f"{shown} is not a Git smart HTTP server (content type {content_type!r})",
                code="GIT_PROTOCOL_UNSUPPORTED",
            )
        return
    if status in (401, 403):
        what = "rejected the credentials" if status == 401 else "denied access"
        raise GitError(f"{shown} {what} (HTTP {status})", code="GIT_AUTH_FAILED")
    if status in (404, 410):
        raise GitError(f"{shown}: repository not found (HTTP {status})", code="GIT_NOT_FOUND")
    if 300 <= status < 400:
        raise GitError(
            f"{shown} redirects (HTTP {status}) to "
            f"{logs.sanitize_url(resp.headers.get('Location', '?'))}; set git.url to the new place",
            code="GIT_REDIRECTED",
        )
    if status >= 500 or status == 429:
        raise GitTransientError(f"{shown}: server error (HTTP {status})", code="GIT_SERVER_ERROR")
    raise GitTransientError(f"{shown}: unexpected HTTP status {status}", code="GIT_SERVER_ERROR")


def _network_error(exc: Exception, shown: str) -> GitError:
    """A typed error for what urllib3 raised; the cause stays attached by the caller."""
    kind, message = pools.failure(exc, shown)
    if kind == "tls":
        return GitError(message, code="GIT_TLS_FAILED")
    code = "GIT_TIMEOUT" if kind == "timeout" else "GIT_UNREACHABLE"
    return GitTransientError(message, code=code)
