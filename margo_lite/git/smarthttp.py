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
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import urllib3
from dulwich.object_store import PackBasedObjectStore

from margo_lite import logs, proxy
from margo_lite.constants import USER_AGENT
from margo_lite.errors import GitError, GitTransientError, ProxyError, SourceError
from margo_lite.pools import Pools

MAX_PACK_BYTES = 256 << 20  # one fetch
SPOOL_IN_MEMORY = 4 << 20  # a downloaded pack larger than this goes to a file in `spool`
MAX_REFS_BYTES = 1 << 20  # one ls-refs answer (it names one branch; anything near this is wrong)
MAX_ADVERTISEMENT_BYTES = 16 << 20  # a protocol v0 server names every ref of the repository

log = logs.get(__name__)

HEX40 = re.compile(rb"^[0-9a-f]{40}$")
_FLUSH, _DELIM, _END = b"0000", b"0001", b"0002"


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
            for line in _pkt_lines(_Reader(resp, MAX_REFS_BYTES, self._shown)):
                if line in (_DELIM, _END):
                    raise _protocol_error(self._shown, "unexpected delimiter in ls-refs")
                if line == _FLUSH:
                    return found
                oid, _, rest = line.rstrip(b"\n").partition(b" ")
                if rest.split(b" ")[0] == ref and HEX40.match(oid):
                    found = oid.decode()
            raise _protocol_error(self._shown, "ls-refs answer ends early")

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
                    _pkt,
                    [b"want %s %s\n" % (want.encode(), b" ".join(asked)), *shallow_lines,
                     b"deepen 1\n"],
                )
            )  # fmt: skip
            body += _FLUSH + b"".join(map(_pkt, [*have_lines, b"done\n"]))
        else:
            args = [b"thin-pack\n", b"ofs-delta\n", b"no-progress\n", b"deepen 1\n"]
            args += [*shallow_lines, b"want %s\n" % want.encode(), *have_lines, b"done\n"]
            body = self._command(b"fetch", caps, args)
        with self._post(body) as resp:
            lines = _pkt_lines(_Reader(resp, MAX_PACK_BYTES, self._shown))
            skip = _skip_v0_head if self._version == 0 else _skip_v2_sections
            first = skip(lines, self._shown)
            if first is None:
                raise _pack_error(self._shown, "the answer ends before the pack")
            for line in itertools.chain((first,), lines):
                if line == _FLUSH:
                    return
                if line in (_DELIM, _END) or not line:
                    raise _pack_error(self._shown, "unexpected packet in the pack stream")
                band, data = line[0], line[1:]
                if band == 1:
                    write(data)
                elif band == 3:
                    raise GitTransientError(
                        f"{self._shown}: server error: {_printable(data)}", code="GIT_SERVER_ERROR"
                    )
            raise _pack_error(self._shown, "the pack was cut short")

    def _discover(self) -> dict[bytes, str] | None:
        """Learn the server's protocol and capabilities; for v0, return the refs it named."""
        url = f"{self._url}/info/refs?service=git-upload-pack"
        with self._request("GET", url, None, {"Accept": "*/*"}) as resp:
            lines = _pkt_lines(_Reader(resp, MAX_ADVERTISEMENT_BYTES, self._shown))
            first = next(lines, _FLUSH)
            if first.startswith(b"# service="):  # v0, and some v2 servers, start with this
                next(lines, None)
                first = next(lines, _FLUSH)
            if first.rstrip(b"\n") == b"version 2":
                caps, refs = {}, None
                for line in lines:
                    if line == _FLUSH:
                        break
                    key, _, value = line.rstrip(b"\n").partition(b"=")
                    caps[key] = value
                version = 2
                usable = b"ls-refs" in caps and b"shallow" in caps.get(b"fetch", b"").split()
            else:
                caps, refs = _parse_advertisement(first, lines, self._shown)
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
        return b"".join(map(_pkt, head)) + _DELIM + b"".join(map(_pkt, args)) + _FLUSH

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


def _parse_advertisement(
    first: bytes, lines: Iterator[bytes], shown: str
) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """Capabilities and refs of a protocol v0 ref advertisement."""
    if first == _FLUSH:  # an empty repository advertises nothing
        return {}, {}
    head, nul, cap_text = first.rstrip(b"\n").partition(b"\0")
    if not nul:
        raise _protocol_error(shown, "no capabilities in the ref advertisement")
    caps = {}
    for word in cap_text.split():
        key, _, value = word.partition(b"=")
        caps[key] = value
    refs: dict[bytes, str] = {}
    for line in itertools.chain((head,), lines):
        if line == _FLUSH:
            return caps, refs
        oid, _, name = line.rstrip(b"\n").partition(b" ")
        if not HEX40.match(oid):
            raise _protocol_error(shown, "bad line in the ref advertisement")
        refs[name] = oid.decode()
    raise _protocol_error(shown, "the ref advertisement ends early")


def _skip_v0_head(lines: Iterator[bytes], shown: str) -> bytes | None:
    """Skip the shallow-update lines and the ACK/NAK lines of a v0 fetch answer; return
    the first pack packet (None when the answer ends first)."""
    for line in lines:
        if line == _FLUSH:
            break
        if not line.startswith((b"shallow ", b"unshallow ")):
            raise _protocol_error(shown, "bad shallow line")
    for line in lines:
        if line.startswith(b"ACK ") or line == b"NAK\n":
            continue
        return line
    return None


def _skip_v2_sections(lines: Iterator[bytes], shown: str) -> bytes | None:
    """Skip the sections of a v2 fetch answer up to "packfile"; return the first pack
    packet (None when the answer ends first)."""
    section = None
    for line in lines:
        if line in (_DELIM, _END):
            section = None
        elif line == _FLUSH:
            raise _protocol_error(shown, "no pack in the fetch answer")
        elif section is None:
            section = line.rstrip(b"\n")
            if section == b"packfile":
                return next(lines, None)
            if section not in (b"acknowledgments", b"shallow-info", b"wanted-refs"):
                raise _protocol_error(shown, f"unexpected section {section!r}")
        elif section == b"shallow-info":
            kind, _, oid = line.rstrip(b"\n").partition(b" ")
            if kind not in (b"shallow", b"unshallow") or not HEX40.match(oid):
                raise _protocol_error(shown, "bad shallow-info line")
    return None


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
    errors = urllib3.exceptions
    reason = exc.reason if isinstance(exc, errors.MaxRetryError) and exc.reason else exc
    if isinstance(reason, errors.SSLError):
        return GitError(f"{shown}: TLS failed: {short_reason(reason)}", code="GIT_TLS_FAILED")
    if isinstance(reason, errors.NewConnectionError):
        return GitTransientError(
            f"cannot connect to {shown}: {short_reason(reason)}", code="GIT_UNREACHABLE"
        )
    if isinstance(reason, errors.TimeoutError):
        return GitTransientError(f"{shown} did not answer in time", code="GIT_TIMEOUT")
    return GitTransientError(
        f"{shown}: connection failed: {short_reason(reason)}", code="GIT_UNREACHABLE"
    )


def short_reason(exc: BaseException) -> str:
    """The useful end of an exception's text: urllib3 nests causes inside its messages."""
    text = str(exc)
    if re.search(r"Name or service not known|Failed to resolve|failure in name resolution", text):
        return "cannot resolve the host name"
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        text = text.split(marker, 1)[-1]
    text = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", text)
    return logs.redact(text.strip("()'\" "))[:200]


def _protocol_error(shown: str, what: str) -> GitError:
    return GitTransientError(f"{shown}: bad answer: {what}", code="GIT_PROTOCOL_ERROR")


def _pack_error(shown: str, what: str) -> GitError:
    return GitTransientError(f"{shown}: invalid pack: {what}", code="GIT_PACK_INVALID")


def _printable(data: bytes) -> str:
    return logs.redact(data.decode("utf-8", "replace").strip())[:200]


def _pkt(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


class _Reader:
    """Exact reads from a response, within a byte budget; a short read means a cut stream."""

    def __init__(self, resp: urllib3.HTTPResponse, limit: int, shown: str) -> None:
        self._resp, self._left, self.shown = resp, limit, shown

    def __call__(self, n: int) -> bytes:
        if n > self._left:
            raise GitError(f"{self.shown}: answer larger than allowed", code="GIT_TOO_LARGE")
        chunks = []
        want = n
        while want:
            try:
                chunk = self._resp.read(want)
            except urllib3.exceptions.ProtocolError:  # the connection broke: a cut answer
                break
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        data = b"".join(chunks)
        self._left -= len(data)
        return data


def _pkt_lines(read: _Reader) -> Iterator[bytes]:
    """Payloads of pkt-lines; flush, delim and response-end as their four-byte markers.

    Ends quietly where the stream ends, so callers detect a cut answer by what is missing.
    An "ERR" line becomes an error.
    """
    while True:
        head = read(4)
        if len(head) < 4:
            return
        try:
            size = int(head, 16)
        except ValueError:
            size = -1
        if size in (0, 1, 2):
            yield head
            continue
        if size < 4:
            raise _protocol_error(read.shown, f"bad pkt-line length {head!r}")
        payload = read(size - 4)
        if len(payload) != size - 4:
            return
        if payload.startswith(b"ERR "):
            raise GitTransientError(
                f"{read.shown}: server error: {_printable(payload[4:])}", code="GIT_SERVER_ERROR"
            )
        yield payload
