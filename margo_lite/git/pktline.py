"""Git's pkt-line framing and the parts of smart HTTP answers that are pure parsing.

`pkt` frames a request line; `pkt_lines` reads an answer's lines through a `Reader`, a byte
budget over the response, ending quietly where the stream ends so that the caller sees a
cut answer by what is missing; the v0 ref advertisement and the heads of v0 and v2 fetch
answers are read up to the pack. Every failure is a coded Git error naming the (sanitized)
URL. `smarthttp.HttpRemote` sends the requests.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import urllib3

from margo_lite import logs
from margo_lite.errors import GitError, GitTransientError

HEX40 = re.compile(rb"^[0-9a-f]{40}$")
FLUSH, DELIM, END = b"0000", b"0001", b"0002"


def pkt(payload: bytes) -> bytes:
    """One pkt-line: the payload after its length in four hex digits."""
    return b"%04x" % (len(payload) + 4) + payload


class Reader:
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


def pkt_lines(read: Reader) -> Iterator[bytes]:
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
            raise protocol_error(read.shown, f"bad pkt-line length {head!r}")
        payload = read(size - 4)
        if len(payload) != size - 4:
            return
        if payload.startswith(b"ERR "):
            raise GitTransientError(
                f"{read.shown}: server error: {printable(payload[4:])}", code="GIT_SERVER_ERROR"
            )
        yield payload


def parse_advertisement(
    first: bytes, lines: Iterator[bytes], shown: str
) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """Capabilities and refs of a protocol v0 ref advertisement."""
    if first == FLUSH:  # an empty repository advertises nothing
        return {}, {}
    head, nul, cap_text = first.rstrip(b"\n").partition(b"\0")
    if not nul:
        raise protocol_error(shown, "no capabilities in the ref advertisement")
    caps = {}
    for word in cap_text.split():
        key, _, value = word.partition(b"=")
        caps[key] = value
    refs: dict[bytes, str] = {}
    for line in itertools.chain((head,), lines):
        if line == FLUSH:
            return caps, refs
        oid, _, name = line.rstrip(b"\n").partition(b" ")
        if not HEX40.match(oid):
            raise protocol_error(shown, "bad line in the ref advertisement")
        refs[name] = oid.decode()
    raise protocol_error(shown, "the ref advertisement ends early")


def skip_v0_head(lines: Iterator[bytes], shown: str) -> bytes | None:
    """Skip the shallow-update lines and the ACK/NAK lines of a v0 fetch answer; return
    the first pack packet (None when the answer ends first)."""
    for line in lines:
        if line == FLUSH:
            break
        if not line.startswith((b"shallow ", b"unshallow ")):
            raise protocol_error(shown, "bad shallow line")
    for line in lines:
        if line.startswith(b"ACK ") or line == b"NAK\n":
            continue
        return line
    return None


def skip_v2_sections(lines: Iterator[bytes], shown: str) -> bytes | None:
    """Skip the sections of a v2 fetch answer up to "packfile"; return the first pack
    packet (None when the answer ends first)."""
    section = None
    for line in lines:
        if line in (DELIM, END):
            section = None
        elif line == FLUSH:
            raise protocol_error(shown, "no pack in the fetch answer")
        elif section is None:
            section = line.rstrip(b"\n")
            if section == b"packfile":
                return next(lines, None)
            if section not in (b"acknowledgments", b"shallow-info", b"wanted-refs"):
                raise protocol_error(shown, f"unexpected section {section!r}")
        elif section == b"shallow-info":
            kind, _, oid = line.rstrip(b"\n").partition(b" ")
            if kind not in (b"shallow", b"unshallow") or not HEX40.match(oid):
                raise protocol_error(shown, "bad shallow-info line")
    return None


def protocol_error(shown: str, what: str) -> GitError:
    return GitTransientError(f"{shown}: bad answer: {what}", code="GIT_PROTOCOL_ERROR")


def pack_error(shown: str, what: str) -> GitError:
    return GitTransientError(f"{shown}: invalid pack: {what}", code="GIT_PACK_INVALID")


def printable(data: bytes) -> str:
    return logs.redact(data.decode("utf-8", "replace").strip())[:200]
