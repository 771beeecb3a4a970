"""Onboarding (contract §6): trust the WOS root CA, get credentials, configure, report.

Steps, each safe to repeat (re-running onboarding overwrites the same files atomically):

1. `GET {wos}/onboarding/certificate` -> `{"certificate": "<base64 PEM>"}`, before any
   trust exists, so the certificate is only accepted when its SHA-256 fingerprint matches
   `--ca-fingerprint` or a human confirms it.
2. `POST {wos}/onboarding/`, TLS now verified against that CA, with the device identity::

       {"deviceId": "gw-001", "vendor": "...", "modelNumber": "...", "serialNumber": "...",
        "agent": "margo-lite/0.1.0"}

   Decision (the specification leaves the answer open), expected answer (200 or 201)::

       {"clientId": "...", "clientSecret": "...", "tokenUrl": "https://wos/oauth/token",
        "git": {"url": "https://git/dev.git", "token": "...", "username": "...",
                "branch": "main", "path": ""}}

   `clientId`, `clientSecret`, `tokenUrl` and `git.url` are required; the rest optional.
3. The CA, the client secret and the Git token go to `<state_dir>/credentials/` (secrets
   mode 0600); the configuration file is rewritten (atomically; comments are not kept) to
   point at them, after the result was checked like any configuration.
4. Capabilities are sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml
from urllib3.exceptions import InsecureRequestWarning

from margo_lite import capabilities, config, logs, pools, proxy, yamlload
from margo_lite.constants import USER_AGENT
from margo_lite.errors import ConfigError, MargoLiteError, OnboardingError, UsageError
from margo_lite.fileio import DIR_MODE, FILE_MODE, SECRET_MODE, write_file_atomic
from margo_lite.valueclass import dataclass
from margo_lite.wos import WosClient
from margo_lite.woshttp import check, make_pool, request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

CREDENTIALS = "credentials"
CA_FILE = "wos-ca.pem"
CLIENT_SECRET_FILE = "wos-client-secret"
GIT_TOKEN_FILE = "git-token"
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class Credentials:
    """What `POST /onboarding/` gave us."""

    client_id: str
    client_secret: str
    token_url: str
    git_url: str
    git_token: str | None = None
    git_username: str | None = None
    git_branch: str | None = None
    git_path: str | None = None


@dataclass(frozen=True)
class Result:
    fingerprint: str
    config_path: Path
    ca_file: Path
    capabilities_sent: bool


# --- pure parts --------------------------------------------------------------------------------


def parse_certificate(answer: Any) -> bytes:
    """The PEM certificate from the answer of GET /onboarding/certificate; exactly one."""
    value = answer.get("certificate") if isinstance(answer, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise OnboardingError(
            "the WOS answer has no 'certificate' field", code="ONBOARDING_CA_INVALID"
        )
    raw = value.strip().encode()
    if not raw.startswith(b"-----BEGIN"):
        try:
            raw = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError):
            raise OnboardingError(
                "the WOS certificate is not base64", code="ONBOARDING_CA_INVALID"
            ) from None
    found = _PEM_CERT.findall(raw)
    if len(found) != 1:
        raise OnboardingError(
            f"expected one PEM certificate from the WOS, found {len(found)}",
            code="ONBOARDING_CA_INVALID",
        )
    pem = found[0].replace(b"\r\n", b"\n") + b"\n"
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        raise OnboardingError(
            f"the WOS certificate does not load: {exc}", code="ONBOARDING_CA_INVALID"
        ) from None
    return pem


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate (DER), as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def same_fingerprint(given: str, actual: str) -> bool:
    def norm(text: str) -> str:
        return re.sub(r"[\s:]", "", text.removeprefix("sha256:").removeprefix("SHA256:")).lower()

    return bool(norm(given)) and norm(given) == norm(actual)


def parse_credentials(answer: Any) -> Credentials:
    """Check the answer of POST /onboarding/ (shape in the module docstring)."""

    def text(source: Any, key: str, where: str, *, required: bool) -> str | None:
        value = source.get(key) if isinstance(source, dict) else None
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise OnboardingError(
                f"the WOS onboarding answer lacks a usable '{where}{key}'",
                code="ONBOARDING_BAD_ANSWER",
            )
        return value.strip()

    if not isinstance(answer, dict):
        raise OnboardingError(
            "the WOS onboarding answer is not a JSON object", code="ONBOARDING_BAD_ANSWER"
        )
    # Register the secrets first: nothing below may show them, even in an error.
    for secret in (
        answer.get("clientSecret"),
        answer.get("git", {}).get("token") if isinstance(answer.get("git"), dict) else None,
    ):
        if isinstance(secret, str):
            logs.register_secret(secret.strip())
    git = answer.get("git")
    if not isinstance(git, dict):
        raise OnboardingError("the WOS onboarding answer lacks 'git'", code="ONBOARDING_BAD_ANSWER")
    return Credentials(
        client_id=text(answer, "clientId", "", required=True) or "",
        client_secret=text(answer, "clientSecret", "", required=True) or "",
        token_url=text(answer, "tokenUrl", "", required=True) or "",
        git_url=text(git, "url", "git.", required=True) or "",
        git_token=text(git, "token", "git.", required=False),
        git_username=text(git, "username", "git.", required=False),
        git_branch=text(git, "branch", "git.", required=False),
        git_path=git.get("path") if isinstance(git.get("path"), str) else None,
    )


def updated_config(
    data: dict[str, Any],
    *,
    device_id: str,
    wos_url: str,
    ca_file: Path,
    secret_file: Path,
    token_file: Path | None,
    creds: Credentials,
) -> dict[str, Any]:
    """The configuration mapping with the onboarding results written in (pure)."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    device = result.setdefault("device", {})
    device["id"] = device_id
    wos = result.setdefault("wos", {})
    wos.update(
        url=wos_url,
        ca_file=str(ca_file),
        token_url=creds.token_url,
        client_id=creds.client_id,
        client_secret_file=str(secret_file),
    )
    git = result.setdefault("git", {})
    git["url"] = creds.git_url
    if token_file is not None:
        git["token_file"] = str(token_file)
        if creds.git_username:
            git.update(username=creds.git_username, auth="basic")
        else:
            git.pop("username", None)
            git["auth"] = "bearer"
    if creds.git_branch:
        git["branch"] = creds.git_branch
    if creds.git_path is not None:
        git["path"] = creds.git_path
    return result


# --- the procedure -----------------------------------------------------------------------------


def _read_existing(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = yamlload.load_one(raw)
    except MargoLiteError as exc:
        raise ConfigError(exc.message, source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections", source=str(path))
    return data


def _state_dir(data: dict[str, Any], config_path: Path) -> Path:
    raw = (
        (data.get("device") or {}).get("state_dir")
        if isinstance(data.get("device"), dict)
        else None
    )
    ctx = config.Context(config_path.absolute().parent)
    try:
        return Path(config.file_path(raw or config.DeviceConfig.state_dir, ctx))
    except ValueError as exc:
        raise ConfigError(str(exc), source=str(config_path), key="device.state_dir") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        write_file_atomic(path, data, mode=mode)
    except OSError as exc:
        raise OnboardingError(
            f"cannot write {path}: {exc.strerror or exc}", code="ONBOARDING_WRITE_FAILED"
        ) from None


def onboard(
    config_path: Path,
    wos_url: str,
    *,
    device_id: str | None = None,
    ca_fingerprint: str | None = None,
    confirm: Callable[[str], bool] = lambda fingerprint: False,
    timeout: float = 10.0,
) -> Result:
    """Onboard this device with the WOS at `wos_url` and rewrite `config_path`."""
    try:
        wos_url = config.http_url("http", "https")(wos_url, config.Context(Path(".")))
    except ValueError as exc:
        raise UsageError(f"--wos-url: {exc}") from None
    data = _read_existing(config_path)
    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    device_id = device_id or device.get("id")
    if not device_id:
        raise UsageError(f"{config_path} names no device.id: give --device-id")
    try:
        config.device_id(device_id, config.Context(Path(".")))
    except ValueError as exc:
        raise UsageError(f"--device-id: {exc}") from None
    state_dir = _state_dir(data, config_path)
    shown = logs.sanitize_url(wos_url)
    proxies = _proxies(data, config_path)

    # 1. the root CA, trusted only by fingerprint
    with warnings.catch_warnings(), make_pool(None, timeout, verify=False, proxies=proxies) as pool:
        warnings.simplefilter("ignore", InsecureRequestWarning)  # the fingerprint decides
        answer = check(
            request(pool, "GET", f"{wos_url}/onboarding/certificate"), "onboarding certificate"
        ).json()
    pem = parse_certificate(answer)
    actual = fingerprint(pem)
    if ca_fingerprint is not None:
        if not same_fingerprint(ca_fingerprint, actual):
            raise OnboardingError(
                f"the WOS root CA at {shown} has fingerprint SHA256 {actual}, "
                f"not the one given with --ca-fingerprint: refused",
                code="ONBOARDING_CA_MISMATCH",
            )
    elif not confirm(actual):
        raise OnboardingError(
            "the WOS root CA was not confirmed: nothing changed", code="ONBOARDING_DECLINED"
        )
    # 2. identity in, credentials out, over TLS verified against that CA
    cfg_caps = _capabilities_config(data, config_path)
    identity = capabilities.discover(device_id, state_dir, cfg_caps)["properties"]
    body = {
        "deviceId": device_id,
        "vendor": identity["vendor"],
        "modelNumber": identity["modelNumber"],
        "serialNumber": identity["serialNumber"],
        "agent": USER_AGENT,
    }
    with make_pool(None, timeout, ca_data=pem.decode("ascii"), proxies=proxies) as pool:
        response = request(
            pool,
            "POST",
            f"{wos_url}/onboarding/",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
    creds = parse_credentials(check(response, "onboarding").json())

    # 3. the new configuration, checked before anything is written; then the files
    credentials = state_dir / CREDENTIALS
    ca_file = credentials / CA_FILE
    secret_file = credentials / CLIENT_SECRET_FILE
    token_file = credentials / GIT_TOKEN_FILE if creds.git_token else None
    new_data = updated_config(
        data,
        device_id=device_id,
        wos_url=wos_url,
        ca_file=ca_file,
        secret_file=secret_file,
        token_file=token_file,
        creds=creds,
    )
    new_cfg = config.parse_config(
        new_data, source=str(config_path), base_dir=config_path.absolute().parent
    )
    _write(ca_file, pem, FILE_MODE)
    _write(secret_file, creds.client_secret.encode() + b"\n", SECRET_MODE)
    if token_file is not None and creds.git_token:
        _write(token_file, creds.git_token.encode() + b"\n", SECRET_MODE)
    try:
        mode = config_path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = FILE_MODE
    text = "# written by margo-lite onboard\n" + yaml.safe_dump(
        new_data, sort_keys=False, default_flow_style=False
    )
    _write(config_path, text.encode(), mode)
    log.info("onboarded with %s as device %s; configuration in %s", shown, device_id, config_path)

    # 4. capabilities
    with WosClient(new_cfg.wos, device_id, state_dir, proxies=proxies) as client:
        sent = client.send_capabilities(
            capabilities.discover(device_id, state_dir, new_cfg.capabilities), force=True
        )
    return Result(actual, config_path, ca_file, sent)


def _proxies(data: dict[str, Any], config_path: Path) -> proxy.Settings:
    """The site proxy of a configuration that may not be complete yet, and the environment."""
    section = config.parse_section(
        config.NetworkConfig,
        data.get("network"),
        "network",
        str(config_path),
        config.Context(config_path.absolute().parent),
    )
    return pools.settings_from(section, os.environ, source=str(config_path))


def _capabilities_config(data: dict[str, Any], config_path: Path) -> config.CapabilitiesConfig:
    """The capabilities section of a configuration that may not be complete yet."""
    return config.parse_section(
        config.CapabilitiesConfig,
        data.get("capabilities"),
        "capabilities",
        str(config_path),
        config.Context(config_path.absolute().parent),
    )
