"""X.509-SVIDs: the SPIFFE identities of the device and of the WFM (Margo 1.0, MIAF).

An SVID carries its SPIFFE ID as the one URI SAN of its leaf certificate. margo-lite reads
that from the certificate bytes itself, with a small DER reader over the few fields it
needs (serial, extensions), rather than through `ssl._ssl._test_decode_cert`: that helper is
a private test hook of CPython (no stability promise, needs a file path), and it shows
neither basicConstraints nor keyUsage, which the SVID leaf rules need. The same reader
checks the WFM's certificate (`getpeercert(binary_form=True)`) and the device's own PEM, and
the standard library's `ssl` does the cryptography (chain, signature, key match).

Pure functions; `check_files` reads the configured files for `check-config` and start-up.
"""

from __future__ import annotations

import base64
import re
import ssl
from pathlib import Path

from margo_lite.errors import ConfigError
from margo_lite.valueclass import dataclass

MAX_PEM_BYTES = 1 << 20
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_SPIFFE = re.compile(r"^spiffe://[a-z0-9._-]+((?:/[A-Za-z0-9._-]+)+)$")
_OID_SAN = bytes.fromhex("551d11")
_OID_BASIC_CONSTRAINTS = bytes.fromhex("551d13")
_OID_KEY_USAGE = bytes.fromhex("551d0f")
_KEY_CERT_SIGN, _CRL_SIGN = 5, 6  # keyUsage bit numbers (RFC 5280 4.2.1.3)


class SvidError(ValueError):
    """A certificate that is not a usable X.509-SVID (or not DER at all)."""


class SvidConfigError(ConfigError):
    """A configured SVID file that cannot be used; one line at check-config or start-up."""

    def __init__(self, message: str, *, code: str, key: str, source: str = "") -> None:
        super().__init__(message, source=source, key=key)
        self.code = code


@dataclass(frozen=True)
class Leaf:
    """What margo-lite reads from a leaf certificate."""

    serial: int
    uris: tuple[str, ...]  # every URI SAN, in order
    is_ca: bool
    signs_certs: bool  # keyCertSign or cRLSign set


# --- a DER reader for the fields above --------------------------------------------------------


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at `pos`; bounds-checked."""
    if pos + 2 > end:
        raise SvidError("truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise SvidError("DER tag of more than one byte")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise SvidError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise SvidError("DER element runs past its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    pos = start
    while pos < end:
        tag, vstart, vend = _tlv(data, pos, end)
        found.append((tag, vstart, vend))
        pos = vend
        if len(found) > 4096:
            raise SvidError("too many DER elements")
    return found


def read_leaf(der: bytes) -> Leaf:
    """Serial, URI SANs and the CA markers of a DER certificate; SvidError if malformed."""
    try:
        return _read_leaf(der)
    except SvidError:
        raise
    except (ValueError, IndexError, TypeError):  # a shape the reader did not expect
        raise SvidError("malformed certificate") from None


def _one(found: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    if len(found) != 1:
        raise SvidError("malformed extension value")
    return found[0]


def _read_leaf(der: bytes) -> Leaf:
    tag, start, end = _tlv(der, 0, len(der))
    if tag != 0x30:
        raise SvidError("not a certificate")
    parts = _children(der, start, end)
    if not parts or parts[0][0] != 0x30:
        raise SvidError("not a certificate")
    tbs = _children(der, parts[0][1], parts[0][2])
    if tbs and tbs[0][0] == 0xA0:  # [0] version
        tbs = tbs[1:]
    if not tbs or tbs[0][0] != 0x02:
        raise SvidError("certificate without a serial number")
    serial = int.from_bytes(der[tbs[0][1] : tbs[0][2]], "big", signed=True)
    uris: list[str] = []
    is_ca = signs = False
    for tag, vstart, vend in tbs:
        if tag != 0xA3:  # [3] extensions
            continue
        seq = _one(_children(der, vstart, vend))
        for _etag, estart, eend in _children(der, seq[1], seq[2]):
            fields = _children(der, estart, eend)
            if len(fields) < 2 or fields[0][0] != 0x06 or fields[-1][0] != 0x04:
                raise SvidError("malformed extension")
            oid = der[fields[0][1] : fields[0][2]]
            value_start, value_end = fields[-1][1], fields[-1][2]
            if oid == _OID_SAN:
                uris += _uris(der, value_start, value_end)
            elif oid == _OID_BASIC_CONSTRAINTS:
                is_ca = _basic_ca(der, value_start, value_end)
            elif oid == _OID_KEY_USAGE:
                signs = _signs(der, value_start, value_end)
    return Leaf(serial, tuple(uris), is_ca, signs)


def _uris(der: bytes, start: int, end: int) -> list[str]:
    names = _one(_children(der, start, end))
    found = []
    for tag, vstart, vend in _children(der, names[1], names[2]):
        if tag == 0x86:  # [6] uniformResourceIdentifier, an IA5String
            try:
                found.append(der[vstart:vend].decode("ascii"))
            except UnicodeDecodeError:
                raise SvidError("URI SAN that is not ASCII") from None
    return found


def _basic_ca(der: bytes, start: int, end: int) -> bool:
    seq = _one(_children(der, start, end))
    inner = _children(der, seq[1], seq[2])
    return bool(inner) and inner[0][0] == 0x01 and der[inner[0][1] : inner[0][2]] != b"\x00"


def _signs(der: bytes, start: int, end: int) -> bool:
    tag, vstart, vend = _tlv(der, start, end)
    if tag != 0x03 or vend <= vstart:
        raise SvidError("malformed keyUsage")
    bits = int.from_bytes(der[vstart + 1 : vend], "big") if vend > vstart + 1 else 0
    width = (vend - vstart - 1) * 8
    return any(bits >> (width - 1 - bit) & 1 for bit in (_KEY_CERT_SIGN, _CRL_SIGN) if bit < width)


def first_pem_cert(pem: bytes) -> bytes:
    """The DER of the first certificate in a PEM file (the leaf; a chain may follow)."""
    match = _PEM_CERT.search(pem)
    if match is None:
        raise SvidError("no PEM certificate")
    try:
        return base64.b64decode(match.group(1), validate=False)
    except ValueError:
        raise SvidError("PEM certificate that is not base64") from None


# --- SPIFFE identities -------------------------------------------------------------------------


def spiffe_id(leaf: Leaf) -> str:
    """The SPIFFE ID of an SVID: exactly one URI SAN, a spiffe:// one with a path; leaf
    constraints (not a CA, no certificate or CRL signing) as the SVID rules say."""
    if len(leaf.uris) != 1:
        raise SvidError(f"an SVID carries exactly one URI SAN, this one has {len(leaf.uris)}")
    uri = leaf.uris[0]
    match = _SPIFFE.match(uri)
    if match is None or {".", ".."} & set(match.group(1).split("/")):
        raise SvidError(f"URI SAN {uri[:200]!r} is not a SPIFFE ID with a path")
    if leaf.is_ca or leaf.signs_certs:
        raise SvidError("a CA certificate is not an SVID")
    return uri


def server_id_for(client_id: str) -> str:
    """The WFM a device's SVID belongs to: `.../margo/wfm/<wfm-id>/client/<id>` without its
    `/client/<id>` (WFM Identity Profile, recognition by the WFM client)."""
    head, sep, tail = client_id.rpartition("/client/")
    if not sep or not tail or "/" in tail or "/margo/wfm/" not in head:
        raise SvidError(
            f"{client_id!r} is not a WFM client identity (spiffe://<trust-domain>/margo/wfm/"
            "<wfm-id>/client/<client-id>): set wos.server_id"
        )
    return head


def check_peer(der: bytes, expected: str) -> str:
    """The WFM certificate's SPIFFE ID when it is exactly `expected`; SvidError otherwise."""
    found = spiffe_id(read_leaf(der))
    if found != expected:
        raise SvidError(f"the server is {found[:200]!r}, not the expected {expected!r}")
    return found


# --- the configured files ----------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    cert: str
    key: str | None  # None: the key is in the certificate file


def load_identity(files: Files, *, source: str = "") -> tuple[str, ssl.SSLContext]:
    """(own SPIFFE ID, a client context holding the cert and key) or SvidConfigError."""
    pem, context = load_context(files, source=source)
    try:
        own = spiffe_id(read_leaf(first_pem_cert(pem)))
    except SvidError as exc:
        raise SvidConfigError(
            f"{files.cert} is not an X.509-SVID: {exc}",
            code="SVID_URI_SAN",
            key="wos.client_cert",
            source=source,
        ) from None
    return own, context


def load_context(files: Files, *, source: str = "") -> tuple[bytes, ssl.SSLContext]:
    """(the certificate file's bytes, a client context holding the cert and key), or
    SvidConfigError for a file that cannot be read or a key that is not the certificate's.

    The key is only ever handed to `ssl`; no message carries its content."""
    key_name = "wos.client_key" if files.key else "wos.client_cert"
    key_path = files.key or files.cert

    def fail(message: str, code: str, key: str) -> SvidConfigError:
        return SvidConfigError(message, code=code, key=key, source=source)

    try:
        with open(files.cert, "rb") as f:
            pem = f.read(MAX_PEM_BYTES)
    except OSError as exc:
        raise fail(
            f"cannot read {files.cert}: {exc.strerror}", "SVID_CERT_UNREADABLE", "wos.client_cert"
        ) from None
    try:
        with open(key_path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise fail(
            f"cannot read {key_path}: {exc.strerror}", "SVID_KEY_UNREADABLE", key_name
        ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise fail(
                f"{key_path} is not the private key of {files.cert}", "SVID_KEY_MISMATCH", key_name
            ) from None
        raise fail(
            f"{files.cert} and {key_path} do not hold a usable certificate and private key",
            "SVID_KEY_UNREADABLE",
            key_name,
        ) from None
    except OSError as exc:
        raise fail(
            f"cannot read {key_path}: {exc.strerror}", "SVID_KEY_UNREADABLE", key_name
        ) from None
    return pem, context


def expected_server(own: str, server_id: str | None, *, source: str = "") -> str:
    """`wos.server_id` when set, else the WFM of the device's own SVID."""
    if server_id:
        return server_id
    try:
        return server_id_for(own)
    except SvidError as exc:
        raise SvidConfigError(
            str(exc), code="SVID_SERVER_ID", key="wos.client_cert", source=source
        ) from None


def key_is_loose(files: Files) -> bool:
    """True when the key file is readable or writable by others (it should be 0600)."""
    try:
        return bool(Path(files.key or files.cert).stat().st_mode & 0o077)
    except OSError:
        return False
