"""Shared parts of the WOS tests: a real PKI made with openssl, the simulator, log capture.

The log capture is autouse in every WOS test module that imports `secret_free_logs`: each
test's whole log output (at DEBUG, both before and after margo-lite's masking filter) and
the output of every CLI run is searched for the test secrets, and the test fails if one
shows up anywhere.
"""

from __future__ import annotations

import io
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from margo_lite import logs
from margo_lite.devkit.wossim import WosSimulator

CLIENT_ID = "gw-test-client"
CLIENT_SECRET = "test-client-secret-5f3a9c1e"
GIT_TOKEN = "test-git-token-8b2d7e40"
TOKEN_PREFIX = "simtok-"  # every token the simulator hands out starts with this
SECRETS = (CLIENT_SECRET, GIT_TOKEN, TOKEN_PREFIX)


def find_secrets(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        leaked = find_secrets(text)
        assert not leaked, f"secret(s) {leaked} in output:\n{text}"


class _RawHandler(logging.Handler):
    """Sees each record before the masking filter: the code must not rely on the mask."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@dataclass
class LogCapture:
    stream: io.StringIO
    raw: _RawHandler

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def raw_text(self) -> str:
        return "\n".join(self.raw.lines)


@pytest.fixture(autouse=True)
def secret_free_logs() -> Iterator[LogCapture]:
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    logs.setup("DEBUG", stream=stream)
    logger.propagate = True  # caplog (on the root logger) still sees every record
    raw = _RawHandler()
    logger.handlers.insert(0, raw)
    capture = LogCapture(stream, raw)
    try:
        yield capture
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    assert_no_secrets(capture.text, capture.raw_text)


def clean(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A CLI run's result, after checking its output holds no secret."""
    assert_no_secrets(result.stdout or "", result.stderr or "")
    return result


# --- PKI ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path
    device_key: Path
    device_cert: Path
    other_device_cert: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _self_signed(folder: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def make_pki(folder: Path) -> Pki:
    """A WOS root CA and a server certificate for 127.0.0.1 it signed; a device key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _self_signed(folder, "ca", "/CN=Test WOS Root CA")
    _, other_ca = _self_signed(folder, "other-ca", "/CN=Impostor Root CA")
    server_key, csr, server_cert = folder / "srv.key", folder / "srv.csr", folder / "srv.pem"
    ext = folder / "srv.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(server_key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(server_cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    device_key, device_cert = _self_signed(folder, "device", "/CN=gw-test")
    _, other_device = _self_signed(folder, "other-device", "/CN=someone-else")
    return Pki(
        ca_cert, ca_key, server_cert, server_key, other_ca, device_key, device_cert, other_device
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def simulator(**kwargs) -> WosSimulator:
    """A simulator with the test credentials (not started)."""
    kwargs.setdefault("client_id", CLIENT_ID)
    kwargs.setdefault("client_secret", CLIENT_SECRET)
    return WosSimulator(**kwargs)


def write_secret(folder: Path) -> Path:
    path = folder / "client-secret"
    path.write_text(CLIENT_SECRET + "\n")
    path.chmod(0o600)
    return path
