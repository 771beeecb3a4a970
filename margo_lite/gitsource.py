"""The desired-state repository: one-request polls, shallow fetches, files of a commit.

A poll asks the server for one ref with Git protocol v2 `ls-refs` and a `ref-prefix` (one
small POST whatever the number of refs) and compares it with the commit held locally; only
when they differ does it fetch, with `deepen 1`, the new tip's objects that are not held
yet (one more POST). A server that speaks only protocol v0 gets the same in its terms (the
ref advertisement, then one POST). The server's protocol v2 capabilities are kept in
`state_dir/git/server.json` (written when they change), so that a new process (a timer's
`margo-lite once`) polls with one request too. An idle poll reads the token and the ref
file and writes nothing.

The parts live in `margo_lite.git`: `smarthttp` (the protocol on urllib3), `localrepo`
(file:// and paths), `store` (the bounded local bare repository), `objects` (reads that
check an object's type), `signature` (the signed bytes of a commit; `pgp` verifies them).
"""

from __future__ import annotations

import base64
import json
import re
import types
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from margo_lite import logs, proxy
from margo_lite.config import GitConfig
from margo_lite.errors import ConfigError, GitError, GitTransientError, MargoLiteError
from margo_lite.git import forked
from margo_lite.git.pktline import HEX40
from margo_lite.git.smarthttp import HttpRemote
from margo_lite.git.store import Store, corrupt, read_files
from margo_lite.pools import short_reason
from margo_lite.source import PollResult, Snapshot
from margo_lite.statestore import write_file_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:  # dulwich loads to fetch or read a commit, never for an idle poll
    from typing import TypeVar

    from dulwich.object_store import BaseObjectStore

    from margo_lite.git.remote import Remote

    T = TypeVar("T")

log = logs.get(__name__)


MAX_TOKEN_BYTES = 16 << 10
MAX_PROTOCOL_BYTES = 64 << 10
PROTOCOL_FILE = "server.json"  # in state_dir/git: the server's capabilities, as last seen
_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_PLAIN_BRANCH = re.compile(r"(?!.*\.\.)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")  # no ".."


class GitSource:
    """The configured branch of the desired-state repository, held in `state_dir/git`; a
    `source.DesiredSource` whose revisions are commit ids."""

    def __init__(
        self,
        cfg: GitConfig,
        state_dir: Path,
        *,
        proxies: proxy.Settings = proxy.DIRECT,
        fork: bool | None = None,
    ) -> None:
        self._cfg = cfg
        self._branch = _check_branch(cfg.branch)
        self._path = _check_path(cfg.path)
        self._store = Store(Path(state_dir) / "git")
        self._protocol_file = Path(state_dir) / "git" / PROTOCOL_FILE
        self._noted = _read_protocol(self._protocol_file, cfg.url)
        self._remote: Remote = _remote_for(cfg, proxies, self._noted)
        # Fetch and read in a forked child (git/forked.py), so the agent never loads dulwich;
        # a local repository is read with dulwich anyway, so it stays in the process.
        self._fork = isinstance(self._remote, HttpRemote) if fork is None else fork

    def poll(self) -> PollResult:
        """Ask for the branch tip (one request); fetch it (one more) only when it changed."""
        self._remote.authorize(_auth_header(self._cfg))
        try:
            tip = self._remote.tip(self._branch)
            self._note_protocol()
            if tip is None:
                raise GitError(
                    f"branch {self._branch!r} does not exist in "
                    f"{logs.sanitize_url(self._cfg.url)}; keeping the last desired state",
                    code="GIT_BRANCH_MISSING",
                )
            held = self.held_revision()
            if tip == held:
                return PollResult(tip, changed=False)
            log.info("branch %s moved to %s; fetching", self._branch, tip)
            self._step(lambda: self._store.fetch(self._remote, tip, held), f"fetches {tip[:12]}")
            return PollResult(tip, changed=True)
        finally:
            self._remote.close()

    def _note_protocol(self) -> None:
        """Keep the server's capabilities for the next process, when they changed."""
        if not isinstance(self._remote, HttpRemote):
            return
        seen = self._remote.protocol
        if seen is None or seen == self._noted:
            return
        data = {
            "url": self._cfg.url,
            "capabilities": {k.decode("latin-1"): v.decode("latin-1") for k, v in seen.items()},
        }
        try:
            self._protocol_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_file_atomic(self._protocol_file, json.dumps(data, sort_keys=True).encode())
        except (OSError, MargoLiteError) as exc:  # a cache: the next process asks again
            log.warning("cannot keep the Git server's capabilities: %s", exc)
            return
        self._noted = seen

    def held_revision(self) -> str | None:
        """The tip held locally (no network), or None before the first fetch."""
        return self._store.tip()

    def close(self) -> None:
        """Each poll closes its connections when it ends: nothing is left open here."""
        self._remote.close()

    def snapshot(self, commit: str) -> Snapshot:
        """Every regular file below `git.path` at `commit`, from the local repository (no
        network). With `git.trusted_keys`, only for a commit signed by one of them."""
        if not HEX40.match(commit.encode("utf-8", "replace")):
            raise GitTransientError(f"{commit!r} is not a commit id", code="GIT_COMMIT_MISSING")
        files = self._step(lambda: self._files(commit), f"reads {commit[:12]}")
        return Snapshot(commit, types.MappingProxyType(files))

    def _step(self, step: Callable[[], T], what: str) -> T:
        """A step that needs dulwich: in a forked child, or here (see `__init__`)."""
        return forked.call(step, what) if self._fork else step()

    def _files(self, commit: str) -> dict[str, bytes]:
        with self._store.open() as repo:
            try:
                return self._read(repo.object_store, commit)
            except corrupt() as exc:  # KeyError here: an object missing below a held commit
                damage = f"{type(exc).__name__}: {short_reason(exc)}"
        # Raised outside the block: the caught exception's frames pin dulwich's pack maps.
        raise self._store.discard(damage)

    def _read(self, store: BaseObjectStore, commit: str) -> dict[str, bytes]:
        from dulwich.objects import Commit

        from margo_lite.git.objects import typed
        from margo_lite.git.signature import verify_commit_signature

        if commit.encode() not in store:
            if commit == self._store.tip():
                raise KeyError(commit)  # the recorded tip is gone: a damaged repository
            raise GitTransientError(
                f"commit {commit} is not held locally", code="GIT_COMMIT_MISSING"
            )
        obj = typed(store, commit.encode(), Commit, "the held tip")
        if self._cfg.trusted_keys:
            verify_commit_signature(obj.as_raw_string(), self._cfg.trusted_keys)
        return read_files(store, obj.tree, self._path)


# --- configuration checks ---------------------------------------------------------------------


def _check_branch(branch: str) -> str:
    if _PLAIN_BRANCH.fullmatch(branch) and not any(
        part.startswith(".") or part.endswith((".", ".lock")) for part in branch.split("/")
    ):
        return branch  # git's rules for these characters hold: no need to load dulwich.refs
    from dulwich.refs import check_ref_format  # what is left is rare (it loads dulwich)

    if not check_ref_format(f"refs/heads/{branch}".encode()):
        raise ConfigError(f"{branch!r} is not a valid branch name", key="git.branch")
    return branch


def _check_path(path: str) -> tuple[bytes, ...]:
    parts = tuple(p for p in path.strip("/").split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ConfigError(f"{path!r} must not contain '..'", key="git.path")
    return tuple(p.encode() for p in parts)


def _read_protocol(path: Path, url: str) -> dict[bytes, bytes] | None:
    """The capabilities a process noted for `url`; None when absent, for another URL, or
    unreadable (a cache: asking the server again costs one request)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_PROTOCOL_BYTES + 1))
        caps = data["capabilities"]
        if data["url"] != url or not isinstance(caps, dict):
            return None
        return {str(k).encode("latin-1"): str(v).encode("latin-1") for k, v in caps.items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as exc:
        log.debug("ignoring %s: %s", path, exc)
        return None


def _remote_for(
    cfg: GitConfig, proxies: proxy.Settings, known: dict[bytes, bytes] | None = None
) -> Remote:
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
        return HttpRemote(
            url, ca_file=cfg.ca_file, timeout=cfg.timeout, proxies=proxies, known=known
        )
    from margo_lite.git.localrepo import LocalRemote  # reads with dulwich: tests, the demo

    if scheme == "file":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("file:// URLs must name a local path", key="git.url")
        return LocalRemote(Path(urllib.parse.unquote(parts.path)))
    if scheme == "":
        return LocalRemote(Path(url))
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
