"""The desired-state repository: one-request polls, shallow fetches, files of a commit.

A poll asks the server for one ref with Git protocol v2 `ls-refs` and a `ref-prefix` (one
small POST whatever the number of refs) and compares it with the commit held locally; only
when they differ does it fetch, with `deepen 1`, the new tip's objects that are not held
yet (one more POST). A server that speaks only protocol v0 gets the same in its terms
(the ref advertisement, then one POST). The requests are built here on urllib3 instead of
going through dulwich's HTTP client, because that client differs between dulwich 0.21.2
and newer releases (v0 only vs. v2 with an extra discovery request per call, dict vs.
result object, shallow handling) and sets no timeouts; dulwich still checks and stores the
pack and reads the objects.

The local copy is a bare repository under `state_dir/git/repo`: packs written by dulwich
and fsynced, the tip in `refs/heads/desired` and the shallow list written atomically after
the objects are durable. It is a cache of the remote: without it the next poll fetches the
tip again. Every fetch adds a pack; past `COMPACT_AFTER_PACKS` packs the tip's objects are
written to one new pack and the others deleted, so the repository holds at most the tip's
objects plus that many changes, however many commits go by. An idle poll reads the token
and the ref file and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import itertools
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import types
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import urllib3
from dulwich.errors import ChecksumMismatch, NotGitRepository, ObjectFormatException
from dulwich.object_store import BaseObjectStore, PackBasedObjectStore
from dulwich.objects import S_ISGITLINK, Commit, ShaFile, Tree
from dulwich.refs import check_ref_format
from dulwich.repo import Repo

from margo_lite import __version__, logs
from margo_lite.config import GitConfig
from margo_lite.errors import ConfigError, GitError, GitTransientError
from margo_lite.statestore import fsync_dir, write_file_atomic

log = logs.get(__name__)

MAX_SNAPSHOT_BYTES = 64 << 20  # all files of a snapshot together
MAX_SNAPSHOT_FILES = 10_000
MAX_PACK_BYTES = 256 << 20  # one fetch
MAX_REFS_BYTES = 1 << 20  # one ls-refs answer (it names one branch; anything near this is wrong)
MAX_ADVERTISEMENT_BYTES = 16 << 20  # a protocol v0 server names every ref of the repository
MAX_TOKEN_BYTES = 16 << 10
COMPACT_AFTER_PACKS = 16
LOCK_WAIT = 60.0  # seconds another process may hold the local repository
LOCAL_REF = "refs/heads/desired"  # under refs/heads so that git tools see it as a branch
AGENT = f"margo-lite/{__version__}"
SPOOL_IN_MEMORY = 4 << 20  # a downloaded pack larger than this goes to a file under state_dir

_HEX40 = re.compile(rb"^[0-9a-f]{40}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_FLUSH, _DELIM, _END = b"0000", b"0001", b"0002"
# What reading a damaged local repository raises (a missing object, a bad zlib stream, ...).
_CORRUPT = (KeyError, OSError, ValueError, zlib.error, ChecksumMismatch, ObjectFormatException)


@dataclass(frozen=True)
class Snapshot:
    """The desired-state files of one commit."""

    commit: str  # hex sha of the commit
    files: Mapping[str, bytes]  # every regular file below git.path; posix path relative to it


@dataclass(frozen=True)
class PollResult:
    commit: str  # remote tip (hex)
    changed: bool  # differs from the commit held locally before this poll


class GitSource:
    """The configured branch of the desired-state repository, held in `state_dir/git`."""

    def __init__(self, cfg: GitConfig, state_dir: Path) -> None:
        self._cfg = cfg
        self._branch = _check_branch(cfg.branch)
        self._path = _check_path(cfg.path)
        self._store = _Store(Path(state_dir) / "git")
        self._remote: _HttpRemote | _LocalRemote = _remote_for(cfg)

    def poll(self) -> PollResult:
        """Ask for the branch tip (one request); fetch it (one more) only when it changed."""
        self._remote.authorize(_auth_header(self._cfg))
        try:
            tip = self._remote.tip(self._branch)
            if tip is None:
                raise GitError(
                    f"branch {self._branch!r} does not exist in "
                    f"{logs.sanitize_url(self._cfg.url)}; keeping the last desired state",
                    code="GIT_BRANCH_MISSING",
                )
            held = self.held_commit()
            if tip == held:
                return PollResult(tip, changed=False)
            log.info("branch %s moved to %s; fetching", self._branch, tip)
            self._store.fetch(self._remote, tip, held)
            return PollResult(tip, changed=True)
        finally:
            self._remote.close()

    def held_commit(self) -> str | None:
        """The tip held locally (no network), or None before the first fetch."""
        return self._store.tip()

    def snapshot(self, commit: str) -> Snapshot:
        """Every regular file below `git.path` at `commit`, from the local repository."""
        if not _HEX40.match(commit.encode("utf-8", "replace")):
            raise GitError(f"{commit!r} is not a commit id", code="GIT_COMMIT_MISSING")
        with self._store.open() as repo:
            try:
                files = self._read(repo.object_store, commit)
                return Snapshot(commit, types.MappingProxyType(files))
            except _CORRUPT as exc:  # KeyError here: an object missing below a held commit
                damage = f"{type(exc).__name__}: {_short(exc)}"
        # Raised outside the block: the caught exception's frames pin dulwich's pack maps.
        raise self._store.discard(damage)

    def _read(self, store: BaseObjectStore, commit: str) -> dict[str, bytes]:
        if commit.encode() not in store:
            if commit == self._store.tip():
                raise KeyError(commit)  # the recorded tip is gone: a damaged repository
            raise GitError(f"commit {commit} is not held locally", code="GIT_COMMIT_MISSING")
        obj = store[commit.encode()]
        if not isinstance(obj, Commit):
            raise GitError(f"{commit} is not a commit", code="GIT_COMMIT_MISSING")
        if self._cfg.trusted_keys:
            verify_commit_signature(obj.as_raw_string(), self._cfg.trusted_keys)
        return read_files(store, obj.tree, self._path)


# --- configuration checks ---------------------------------------------------------------------


def _check_branch(branch: str) -> str:
    if not check_ref_format(f"refs/heads/{branch}".encode()):
        raise ConfigError(f"{branch!r} is not a valid branch name", key="git.branch")
    return branch


def _check_path(path: str) -> tuple[bytes, ...]:
    parts = tuple(p for p in path.strip("/").split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ConfigError(f"{path!r} must not contain '..'", key="git.path")
    return tuple(p.encode() for p in parts)


def _remote_for(cfg: GitConfig) -> _HttpRemote | _LocalRemote:
    url = cfg.url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "must not contain a user or password: use git.username and git.token_file",
                key="git.url",
            )
        if cfg.token_file and cfg.auth == "basic" and not cfg.username:
            raise ConfigError("git.auth basic with a token_file needs it", key="git.username")
        if scheme == "http" and cfg.token_file:
            log.warning("git.url is plain http: the access token travels unencrypted")
        return _HttpRemote(url, ca_file=cfg.ca_file, timeout=cfg.timeout)
    if scheme == "file":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("file:// URLs must name a local path", key="git.url")
        return _LocalRemote(Path(urllib.parse.unquote(parts.path)))
    if scheme == "":
        return _LocalRemote(Path(url))
    raise ConfigError(
        f"the {scheme}:// transport is not supported (http, https, file)", key="git.url"
    )


def _auth_header(cfg: GitConfig) -> str | None:
    """The Authorization value, from the token file read now (tokens rotate)."""
    if not cfg.token_file:
        return None
    try:
        with open(cfg.token_file, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise GitError(
            f"cannot read git.token_file {cfg.token_file}: {exc.strerror}",
            code="GIT_TOKEN_UNREADABLE",
        ) from None
    token = raw.decode("utf-8", "replace").strip()
    logs.register_secret(token)
    if len(raw) > MAX_TOKEN_BYTES or not _TOKEN.match(token):
        raise GitError(
            f"git.token_file {cfg.token_file} does not hold one token "
            "(printable characters without spaces)",
            code="GIT_TOKEN_UNREADABLE",
        )
    if cfg.auth == "bearer":
        return f"Bearer {token}"
    credentials = base64.b64encode(f"{cfg.username}:{token}".encode()).decode("ascii")
    logs.register_secret(credentials)
    return f"Basic {credentials}"


# --- smart HTTP, protocol v2 ------------------------------------------------------------------


class _HttpRemote:
    """The Git smart HTTP protocol: v2 (`ls-refs` and `fetch`, one POST each), or v0 for
    servers that only speak that (the ref advertisement GET, and one POST to fetch).

    The first poll after start asks for the server's capabilities (a GET); later polls
    reuse them. Connections are closed after each poll, so nothing lingers between polls.
    """

    def __init__(self, url: str, *, ca_file: str | None, timeout: float) -> None:
        self._url = url.rstrip("/")
        self._shown = logs.sanitize_url(url)
        retries = urllib3.Retry(
            total=1, connect=1, read=0, redirect=0, status=0, other=0, raise_on_status=False
        )
        self._pool = urllib3.PoolManager(
            num_pools=2,
            retries=retries,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file,
        )
        self._authorization: str | None = None
        self._capabilities: dict[bytes, bytes] | None = None
        self._version = 2

    def authorize(self, header: str | None) -> None:
        self._authorization = header

    def close(self) -> None:
        self._pool.clear()

    def tip(self, branch: str) -> str | None:
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
                if rest.split(b" ")[0] == ref and _HEX40.match(oid):
                    found = oid.decode()
            raise _protocol_error(self._shown, "ls-refs answer ends early")

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
                asked.append(b"agent=" + AGENT.encode())
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
            head.append(b"agent=%s\n" % AGENT.encode())
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
        headers = {**headers, "User-Agent": AGENT}
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
        try:
            _check_status(resp, self._shown)
            try:
                yield resp
            except urllib3.exceptions.HTTPError as exc:
                raise _network_error(exc, self._shown) from exc
        except GitError:
            self._capabilities = None  # ask again next time: the server may have changed
            raise
        finally:
            resp.release_conn()


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
        if not _HEX40.match(oid):
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
            if kind not in (b"shallow", b"unshallow") or not _HEX40.match(oid):
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
    raise GitError(f"{shown}: unexpected HTTP status {status}", code="GIT_SERVER_ERROR")


def _network_error(exc: Exception, shown: str) -> GitError:
    """A typed error for what urllib3 raised; the cause stays attached by the caller."""
    errors = urllib3.exceptions
    reason = exc.reason if isinstance(exc, errors.MaxRetryError) and exc.reason else exc
    if isinstance(reason, errors.SSLError):
        return GitError(f"{shown}: TLS failed: {_short(reason)}", code="GIT_TLS_FAILED")
    if isinstance(reason, errors.NewConnectionError):
        return GitTransientError(
            f"cannot connect to {shown}: {_short(reason)}", code="GIT_UNREACHABLE"
        )
    if isinstance(reason, errors.TimeoutError):
        return GitTransientError(f"{shown} did not answer in time", code="GIT_TIMEOUT")
    return GitTransientError(
        f"{shown}: connection failed: {_short(reason)}", code="GIT_UNREACHABLE"
    )


def _short(exc: BaseException) -> str:
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


# --- local repositories (file:// and paths) ---------------------------------------------------


class _LocalRemote:
    """A repository on a local filesystem (tests, demo, USB sticks): read with dulwich."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def authorize(self, header: str | None) -> None:
        pass

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def _open(self) -> Iterator[Repo]:
        try:
            repo = Repo(str(self._path))
        except (NotGitRepository, FileNotFoundError, NotADirectoryError):
            raise GitError(f"{self._path}: repository not found", code="GIT_NOT_FOUND") from None
        try:
            yield repo
        finally:
            repo.close()

    def tip(self, branch: str) -> str | None:
        with self._open() as repo:
            try:
                return repo.refs[f"refs/heads/{branch}".encode()].decode()
            except KeyError:
                return None

    def objects(self, want: str, held: Callable[[bytes], bool]) -> list[ShaFile]:
        """The objects of commit `want` (without its parents) that `held` says are missing."""
        with self._open() as repo:
            store = repo.object_store
            try:
                commit = store[want.encode()]
                found: dict[bytes, ShaFile] = {commit.id: commit}
                pending = [commit.tree]
                total = 0
                while pending:
                    sha = pending.pop()
                    if sha in found or held(sha):
                        continue  # a held tree is held with everything below it
                    tree = found[sha] = store[sha]
                    for entry in tree.iteritems():
                        if stat.S_ISDIR(entry.mode):
                            pending.append(entry.sha)
                        elif not S_ISGITLINK(entry.mode) and entry.sha not in found:
                            if held(entry.sha):
                                continue
                            found[entry.sha] = blob = store[entry.sha]
                            total += len(blob.as_raw_string())
                            if total > MAX_PACK_BYTES:
                                raise GitError(
                                    f"{self._path}: commit {want} holds more than "
                                    f"{MAX_PACK_BYTES >> 20} MiB",
                                    code="GIT_TOO_LARGE",
                                )
            except KeyError as exc:
                raise GitError(
                    f"{self._path} is incomplete (missing object {exc.args[0]!r})",
                    code="GIT_PACK_INVALID",
                ) from None
            return list(found.values())


# --- the local repository ---------------------------------------------------------------------


class _Store:
    """The bare repository under `state_dir/git/repo`, written only when the tip changes."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._repo = folder / "repo"
        self._tmp = folder / "tmp"

    def tip(self) -> str | None:
        try:
            data = (self._repo / LOCAL_REF).read_bytes().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GitError(
                f"cannot read {self._repo / LOCAL_REF}: {exc.strerror}", code="GIT_STORE_FAILED"
            ) from None
        if not _HEX40.match(data):
            log.warning("%s is damaged; the tip will be fetched again", self._repo / LOCAL_REF)
            return None
        return data.decode()

    def shallow(self) -> set[str]:
        try:
            lines = (self._repo / "shallow").read_bytes().split()
        except FileNotFoundError:
            return set()
        return {line.decode() for line in lines if _HEX40.match(line)}

    @contextlib.contextmanager
    def open(self) -> Iterator[Repo]:
        """The repository to read, shared with other readers; a fetch waits for them."""
        if not (self._repo / "HEAD").exists():
            raise GitError("no commit has been fetched yet", code="GIT_COMMIT_MISSING")
        with self._lock(fcntl.LOCK_SH), self._open_unlocked() as repo:
            yield repo

    @contextlib.contextmanager
    def _open_unlocked(self) -> Iterator[Repo]:
        repo = Repo(str(self._repo))
        try:
            yield repo
        finally:
            try:
                repo.close()
            except BufferError:  # an exception in flight pins a pack map; the GC closes it
                log.debug("pack files of %s left to the garbage collector", self._repo)

    @contextlib.contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        """An flock on `git/lock`, so that a second process (`once` beside `run`) never
        reads packs that a compaction is deleting. Waits at most LOCK_WAIT seconds."""
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._folder / "lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, kind | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GitTransientError(
                            f"{self._folder} is held by another margo-lite process",
                            code="GIT_STORE_BUSY",
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def discard(self, cause: object) -> GitError:
        """Delete a damaged repository, so that the next poll fetches the tip afresh."""
        with self._lock(fcntl.LOCK_EX):
            return self._discard(cause)

    def _discard(self, cause: object) -> GitError:
        log.warning("the local repository is damaged (%s); it will be fetched again", cause)
        shutil.rmtree(self._repo, ignore_errors=True)
        return GitTransientError(
            f"the local repository {self._repo} was damaged and is fetched again",
            code="GIT_STORE_CORRUPT",
        )

    def _create(self) -> None:
        """Make the bare repository in a temporary folder, then rename it into place."""
        if (self._repo / "HEAD").exists():
            try:
                Repo(str(self._repo)).close()
                return
            except (NotGitRepository, OSError, ValueError) as exc:
                self._discard(exc)
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        building = self._folder / "repo.new"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        Repo.init_bare(str(building)).close()
        write_file_atomic(building / "HEAD", f"ref: {LOCAL_REF}\n".encode())
        shutil.rmtree(self._repo, ignore_errors=True)  # a leftover without HEAD
        os.rename(building, self._repo)
        fsync_dir(self._folder)

    def fetch(self, remote: _HttpRemote | _LocalRemote, want: str, held: str | None) -> None:
        """Get `want`'s objects, make them durable, then record it as the tip."""
        with self._lock(fcntl.LOCK_EX):
            self._fetch(remote, want, held)

    def _fetch(self, remote: _HttpRemote | _LocalRemote, want: str, held: str | None) -> None:
        try:
            self._create()
            doomed: set[str] = set()
            with self._open_unlocked() as repo:
                store = repo.object_store
                before = _pack_files(self._repo)
                if want.encode() in store:
                    log.info("commit %s is already held", want)
                elif isinstance(remote, _LocalRemote):
                    objects = remote.objects(want, lambda sha: sha in store)
                    store.add_objects([(obj, None) for obj in objects])
                else:
                    self._fetch_pack(remote, store, want, held)
                _check_complete(store, want)
                _fsync_new(self._repo, before)
                commit = store[want.encode()]
                shallow = self.shallow() | ({want} if commit.parents else set())
                if len(_pack_files(self._repo)) > COMPACT_AFTER_PACKS:
                    shallow, doomed = self._compact(store, commit)
            self._set_tip(want, shallow)
            self._clean(doomed)
        except OSError as exc:
            raise GitError(
                f"cannot write the local repository: {exc}", code="GIT_STORE_FAILED"
            ) from exc

    def _fetch_pack(
        self, remote: _HttpRemote, store: PackBasedObjectStore, want: str, held: str | None
    ) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=self._tmp) as spool:
            remote.fetch(want, held, self.shallow(), spool.write)
            if not spool.tell():
                return
            spool.seek(0)
            try:
                store.add_thin_pack(spool.read, None)
            except OSError:
                raise
            except Exception as exc:  # dulwich raises many types for a broken pack
                raise GitTransientError(
                    f"the pack for {want} is invalid: {type(exc).__name__}: {_short(exc)}",
                    code="GIT_PACK_INVALID",
                ) from exc

    def _compact(self, store: PackBasedObjectStore, commit: Commit) -> tuple[set[str], set[str]]:
        """Write the tip's objects to one new pack; return the new shallow list and the
        packs to delete once the tip is recorded."""
        objects: dict[bytes, ShaFile] = {commit.id: commit}
        pending = [commit.tree]
        while pending:
            sha = pending.pop()
            if sha in objects:
                continue
            tree = objects[sha] = store[sha]
            for entry in tree.iteritems():
                if stat.S_ISDIR(entry.mode):
                    pending.append(entry.sha)
                elif not S_ISGITLINK(entry.mode) and entry.sha not in objects:
                    objects[entry.sha] = store[entry.sha]
        before = _pack_files(self._repo)
        store.add_objects([(obj, None) for obj in objects.values()])
        if not _pack_files(self._repo) - before:
            return self.shallow(), set()  # an existing pack holds exactly these objects
        _fsync_new(self._repo, before)
        log.info("compacted the local repository to %d objects", len(objects))
        return ({commit.id.decode()} if commit.parents else set()), before

    def _set_tip(self, want: str, shallow: set[str]) -> None:
        """Record the shallow list, then the tip: only after the objects are durable."""
        if shallow:
            write_file_atomic(
                self._repo / "shallow", "".join(f"{s}\n" for s in sorted(shallow)).encode()
            )
        else:
            with contextlib.suppress(FileNotFoundError):
                (self._repo / "shallow").unlink()
        ref = self._repo / LOCAL_REF
        ref.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(ref, f"{want}\n".encode())

    def _clean(self, doomed: set[str]) -> None:
        """Delete replaced packs and what an interrupted fetch left behind."""
        pack_dir = self._repo / "objects" / "pack"
        if doomed:
            for name in doomed:
                for suffix in (".pack", ".idx"):
                    with contextlib.suppress(FileNotFoundError):
                        (pack_dir / (name + suffix)).unlink()
            fsync_dir(pack_dir)
        shutil.rmtree(self._tmp, ignore_errors=True)
        for leftover in pack_dir.glob("tmp_pack_*"):
            leftover.unlink(missing_ok=True)
        for leftover in (self._repo / "objects").glob("incoming-*"):
            leftover.unlink(missing_ok=True)


def _pack_files(repo: Path) -> set[str]:
    pack_dir = repo / "objects" / "pack"
    return {p.name[: -len(".pack")] for p in pack_dir.glob("pack-*.pack")}


def _fsync_new(repo: Path, before: set[str]) -> None:
    pack_dir = repo / "objects" / "pack"
    for name in _pack_files(repo) - before:
        for suffix in (".pack", ".idx"):
            fd = os.open(pack_dir / (name + suffix), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(pack_dir)


def _check_complete(store: BaseObjectStore, want: str) -> None:
    """The commit and every tree and blob of it are held: never record a partial tip."""
    try:
        commit = store[want.encode()]
        if not isinstance(commit, Commit):
            raise KeyError(want)
        pending = [commit.tree]
        while pending:
            tree = store[pending.pop()]
            for entry in tree.iteritems():
                if stat.S_ISDIR(entry.mode):
                    pending.append(entry.sha)
                elif not S_ISGITLINK(entry.mode) and entry.sha not in store:
                    raise KeyError(entry.sha)
    except KeyError as exc:
        raise GitTransientError(
            f"the fetched commit {want} is incomplete (missing {exc.args[0]!r})",
            code="GIT_PACK_INVALID",
        ) from None


# --- reading files ----------------------------------------------------------------------------


def read_files(store: BaseObjectStore, tree_id: bytes, path: tuple[bytes, ...]) -> dict[str, bytes]:
    """Every regular file below `path` in the tree, keyed by its posix path relative to it.

    A missing folder gives no files: Git cannot hold an empty folder, so a WOS that removed
    the last deployment removed the folder too.
    """
    tree = store[tree_id]
    for name in path:
        entry = next((e for e in tree.iteritems() if e.path == name), None)
        if entry is None:
            return {}
        if not stat.S_ISDIR(entry.mode):
            raise GitError(
                f"git.path {b'/'.join(path).decode(errors='replace')!r} is not a folder",
                code="GIT_PATH_INVALID",
            )
        tree = store[entry.sha]
    files: dict[str, bytes] = {}
    total = 0
    pending: list[tuple[str, Tree]] = [("", tree)]
    while pending:
        prefix, tree = pending.pop()
        for entry in tree.iteritems():
            name = prefix + entry.path.decode("utf-8", "surrogateescape")
            if stat.S_ISDIR(entry.mode):
                pending.append((name + "/", store[entry.sha]))
            elif stat.S_ISREG(entry.mode):
                data = store[entry.sha].as_raw_string()
                total += len(data)
                if total > MAX_SNAPSHOT_BYTES or len(files) >= MAX_SNAPSHOT_FILES:
                    raise GitError(
                        f"the desired-state files are larger than {MAX_SNAPSHOT_BYTES >> 20} MiB "
                        f"or more than {MAX_SNAPSHOT_FILES} files",
                        code="GIT_TOO_LARGE",
                    )
                files[name] = data
    return files


# --- commit signatures ------------------------------------------------------------------------


def split_signature(raw: bytes) -> tuple[bytes, bytes | None]:
    """(the signed payload, the signature) of a raw commit: git's own rule, the `gpgsig`
    header and its continuation lines removed from the headers."""
    head, sep, message = raw.partition(b"\n\n")
    kept, signature, in_sig = [], [], False
    for line in head.split(b"\n"):
        if line.startswith(b"gpgsig "):
            in_sig = True
            signature.append(line[len(b"gpgsig ") :])
        elif in_sig and line.startswith(b" "):
            signature.append(line[1:])
        else:
            in_sig = False
            kept.append(line)
    payload = b"\n".join(kept) + sep + message
    return payload, (b"\n".join(signature) + b"\n" if signature else None)


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP data from ASCII armor (gpgv reads binary keyrings only)."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP" not in text:
        return data
    body = text.split("-----BEGIN PGP", 1)[1].split("\n", 1)[1]
    body = body.split("-----END PGP", 1)[0]
    if "\n\n" in body.replace("\r", ""):
        body = body.replace("\r", "").split("\n\n", 1)[1]
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.startswith("=")]
    return base64.b64decode("".join(lines))


def verify_commit_signature(raw: bytes, key_files: tuple[str, ...]) -> None:
    """Raise GIT_SIGNATURE_INVALID unless a trusted key made the commit's signature."""
    payload, signature = split_signature(raw)
    if signature is None:
        raise GitError("the commit is not signed", code="GIT_SIGNATURE_INVALID")
    with tempfile.TemporaryDirectory(prefix="margo-lite-gpgv-") as tmp:
        keyring, sig, data = Path(tmp, "keys.gpg"), Path(tmp, "commit.sig"), Path(tmp, "commit")
        try:
            keyring.write_bytes(b"".join(dearmor(Path(k).read_bytes()) for k in key_files))
        except (OSError, ValueError, binascii.Error) as exc:
            raise GitError(
                f"cannot read git.trusted_keys: {exc}", code="GIT_SIGNATURE_INVALID"
            ) from None
        sig.write_bytes(signature)
        data.write_bytes(payload)
        argv = ["gpgv", "--status-fd", "1", "--keyring", str(keyring), str(sig), str(data)]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=60, env={"LANG": "C"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"cannot run gpgv: {exc}", code="GIT_SIGNATURE_INVALID") from None
        log.debug("gpgv took %.0f ms", (time.monotonic() - started) * 1000)
    if proc.returncode != 0 or b"[GNUPG:] VALIDSIG " not in proc.stdout:
        status = proc.stdout.decode(errors="replace")
        reason = next(
            (w for w in ("BADSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "ERRSIG") if w in status),
            "no valid signature",
        )
        raise GitError(
            f"the commit's signature does not verify against git.trusted_keys ({reason})",
            code="GIT_SIGNATURE_INVALID",
        )
