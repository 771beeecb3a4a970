"""HTTP(S) downloads of packages, signatures and keys: bounded in size, time and retries.

TLS is always verified (the system store, or a given CA bundle). Each connect and each
read has a timeout, and the whole fetch (redirects, retries and their waits included) a
deadline: a server that trickles a byte at a time, each within the read timeout, is cut
there, so one slow package never holds up the other deployments' steps longer. A body
larger than the limit is refused from its Content-Length before it is read, and while it
streams when the server sends none. Failures that may go away by themselves (no
connection, timeouts, a cut body, 5xx, 408, 429) are retried with exponential backoff a
bounded number of times, within the deadline. Redirects are followed by hand so that an
https URL can never be redirected to plain http.

Credentials in the URL (`https://user:password@host/...`) are sent as HTTP basic auth to
that origin only, never to where it redirects, and are never logged.

Conditional requests (If-None-Match / If-Modified-Since with the validators a previous
answer gave) let an unchanged package cost one small request and no body. The body is
taken as stored (no Content-Encoding decoding): a signature covers the bytes as served.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError

from margo_lite import logs, proxy
from margo_lite.constants import USER_AGENT
from margo_lite.errors import DownloadError, PackageError, ProxyError
from margo_lite.fileio import write_all
from margo_lite.pools import Pools
from margo_lite.schedule import Backoff
from margo_lite.valueclass import dataclass, field

log = logs.get(__name__)

CHUNK = 1 << 16
MAX_REDIRECTS = 5
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


#: One download: three tries, 1 s then 2 s apart (at most 10 s), inside its deadline.
BACKOFF = Backoff(base=0.5, cap=10.0, attempts=3)


@dataclass(frozen=True)
class Validators:
    """What a server said about a body, to ask "changed since?" next time."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        found = {}
        if self.etag:
            found["If-None-Match"] = self.etag
        if self.last_modified:
            found["If-Modified-Since"] = self.last_modified
        return found


@dataclass(frozen=True)
class Fetched:
    """The outcome of a fetch: a new body in the destination file, or "not modified"."""

    modified: bool
    validators: Validators
    sha256: str = ""
    size: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)  # the answer's, names lower-case


class _Retryable(Exception):
    """One attempt failed in a way worth another attempt."""


@dataclass(frozen=True)
class _Deadline:
    """When the whole fetch must be over (monotonic seconds), and what it is called."""

    at: float
    seconds: float
    clock: Callable[[], float]

    def left(self) -> float:
        return self.at - self.clock()

    def check(self, shown: str) -> None:
        if self.left() <= 0:
            raise DownloadError(
                f"cannot download {shown}: not done within packages.deadline "
                f"({self.seconds:g}s); the server sends too slowly"
            )


class Downloader:
    """Fetches URLs into files. One connection pool, reused across fetches."""

    def __init__(
        self,
        *,
        timeout: float,
        deadline: float = 1800.0,
        ca_file: str | None = None,
        backoff: Backoff = BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        proxies: proxy.Settings = proxy.DIRECT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_timeout = timeout
        self._deadline = deadline
        self._shared: _Deadline | None = None  # set by `one_deadline`
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._pool = Pools(proxies, num_pools=8, maxsize=2, ca_file=ca_file)

    @contextlib.contextmanager
    def one_deadline(self) -> Iterator[None]:
        """Every fetch inside shares one deadline: a package, its signature and its key
        together take no longer than one download may (one step's whole budget)."""
        self._shared = self._new_deadline()
        try:
            yield
        finally:
            self._shared = None

    def _new_deadline(self) -> _Deadline:
        return _Deadline(self._clock() + self._deadline, self._deadline, self._clock)

    def fetch(
        self,
        url: str,
        dest: Path,
        *,
        limit: int,
        validators: Validators | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fetched:
        """GET `url` into the new file `dest` (nothing is left there on failure). `headers`
        go to the URL's origin only, like credentials (an OCI registry's Accept and token).

        Raises DownloadError (transient: the cause is remote; also when the deadline
        passes) or PACKAGE_TOO_LARGE.
        """
        shown = logs.sanitize_url(url)
        if not _valid_url(url):
            raise PackageError(f"{shown}: not a valid http(s) URL", code="PACKAGE_INVALID")
        deadline = self._shared or self._new_deadline()
        tries = self._backoff
        while True:
            try:
                return self._attempt(
                    url, dest, limit=limit, validators=validators, by=deadline, extra=headers
                )
            except _Retryable as exc:
                tries = tries.failed()
                delay = tries.delay()
                if tries.exhausted or delay >= deadline.left():
                    raise DownloadError(
                        f"cannot download {shown}: {exc} (tried {tries.failures} times)"
                    ) from None
                log.info("download of %s failed (%s); retrying in %.1fs", shown, exc, delay)
                self._sleep(delay)

    def _attempt(
        self,
        url: str,
        dest: Path,
        *,
        limit: int,
        validators: Validators | None,
        by: _Deadline,
        extra: Mapping[str, str] | None,
    ) -> Fetched:
        headers = {
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
            **(validators.headers() if validators else {}),
        }
        parts = urllib.parse.urlsplit(url)
        origin = _origin(url)
        credentials = {}
        if parts.username is not None:  # user:password@ in the URL: HTTP basic auth
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            logs.register_secret(password)
            credentials = urllib3.make_headers(basic_auth=f"{user}:{password}")
        credentials.update(extra or {})
        current = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        for _ in range(MAX_REDIRECTS + 1):
            # credentials go to the origin named in the URL only, never where it redirects
            same_origin = _origin(current) == origin
            by.check(logs.sanitize_url(url))
            response = self._request(
                current, {**headers, **(credentials if same_origin else {})}, by
            )
            try:
                if response.status in (301, 302, 303, 307, 308):
                    current = _redirect_target(current, response.headers.get("Location"))
                    continue
                if response.status == 304 and validators:
                    return Fetched(modified=False, validators=validators)
                if response.status in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {response.status}")
                if response.status != 200:
                    raise DownloadError(
                        f"cannot download {logs.sanitize_url(url)}: HTTP {response.status}",
                        status=response.status,
                        challenge=response.headers.get("WWW-Authenticate"),
                    )
                return self._save(response, url, dest, limit, by)
            finally:
                _finish(response)
        raise DownloadError(
            f"cannot download {logs.sanitize_url(url)}: more than {MAX_REDIRECTS} redirects"
        )

    def _request(self, url: str, headers: dict[str, str], by: _Deadline) -> urllib3.HTTPResponse:
        # No single wait outlasts the deadline: the body loop checks it between reads.
        wait = max(0.001, min(self._read_timeout, by.left()))
        try:
            return self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=wait, read=wait),
            )
        except SSLError as exc:  # a certificate problem does not go away by retrying
            raise DownloadError(
                f"cannot download {logs.sanitize_url(url)}: TLS: {_reason(exc)}"
            ) from None
        except Urllib3Error as exc:
            raise _Retryable(_reason(exc)) from None
        except ProxyError as exc:  # the site's proxy, not the server: retried with the deployment
            raise DownloadError(
                f"cannot download {logs.sanitize_url(url)}: {exc.message}", code=exc.code
            ) from None

    def _save(
        self, response: urllib3.HTTPResponse, url: str, dest: Path, limit: int, by: _Deadline
    ) -> Fetched:
        shown = logs.sanitize_url(url)
        length = _content_length(response.headers.get("Content-Length"))
        if length is not None and length > limit:
            response.close()
            raise PackageError(
                f"{shown} is {length} bytes, more than the limit of {limit}",
                code="PACKAGE_TOO_LARGE",
            )
        digest = hashlib.sha256()
        size = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                for chunk in _arriving(response):
                    by.check(shown)
                    size += len(chunk)
                    if size > limit:
                        response.close()
                        raise PackageError(
                            f"{shown} is more than the limit of {limit} bytes",
                            code="PACKAGE_TOO_LARGE",
                        )
                    digest.update(chunk)
                    write_all(fd, chunk)
            except (Urllib3Error, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
                raise _Retryable(f"body cut short: {_reason(exc)}") from None
            if length is not None and size != length:
                raise _Retryable(f"body cut short: {size} of {length} bytes")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            dest.unlink(missing_ok=True)
            raise
        os.close(fd)
        validators = Validators(
            etag=response.headers.get("ETag"), last_modified=response.headers.get("Last-Modified")
        )
        answer = {name.lower(): value for name, value in response.headers.items()}
        return Fetched(True, validators, digest.hexdigest(), size, answer)


def _arriving(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    """The body as it arrives: each read returns what the connection has (`read1`), up to
    CHUNK, so the deadline is checked between reads of a trickle, not after 64 KiB of it."""
    read1 = getattr(response, "read1", None)  # urllib3 2
    if read1 is None:  # urllib3 1.26: http.client's own read1, the body taken as stored
        read1 = response._fp.read1
    while chunk := read1(CHUNK):
        yield chunk


def _finish(response: urllib3.HTTPResponse) -> None:
    """Give the connection back for reuse when what is left of the body is small, else close."""
    length = _content_length(response.headers.get("Content-Length"))
    try:
        if length is not None and length <= CHUNK:
            response.drain_conn()
        else:
            response.close()
    except Urllib3Error:
        response.close()
    response.release_conn()


def _redirect_target(current: str, location: str | None) -> str:
    if not location:
        raise DownloadError(f"{logs.sanitize_url(current)}: redirect without a Location")
    target = urllib.parse.urljoin(current, location)
    if not _valid_url(target):
        raise DownloadError(f"{logs.sanitize_url(current)}: redirect to an invalid URL")
    scheme = urllib.parse.urlsplit(target).scheme.lower()
    if urllib.parse.urlsplit(current).scheme.lower() == "https" and scheme != "https":
        raise DownloadError(
            f"{logs.sanitize_url(current)}: refusing a redirect from https to plain http"
        )
    return target


def _valid_url(url: str) -> bool:
    """An http(s) URL with a host and, if any, a numeric port."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _reason(exc: Exception) -> str:
    """A short cause without the URL (which may carry credentials)."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    return logs.redact(text.split(": ", 1)[-1] if "object at 0x" in text else text)
