"""Onboarding end to end against the simulator over TLS, and its pure parts."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from margo_lite import config, onboarding
from margo_lite.errors import ConfigError, OnboardingError, WosError
from margo_lite.wos import WosClient, status_body
from tests.support.wos import (
    CLIENT_SECRET,
    GIT_TOKEN,
    clean,
    pki,  # noqa: F401 (fixture)
    secret_free_logs,  # noqa: F401 (autouse fixture)
    simulator,
)

GIT = {"url": "https://git.example.com/devices/gw-test.git", "token": GIT_TOKEN, "branch": "prod"}


def openssl_fingerprint(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return out.strip().split("=", 1)[1]


@pytest.fixture
def tls_sim(pki):  # noqa: F811
    sim = simulator(
        tls=(str(pki.server_cert), str(pki.server_key)), ca_pem=pki.ca_cert.read_bytes(), git=GIT
    )
    with sim:
        yield sim


@pytest.fixture
def partial_config(tmp_path: Path) -> Path:
    """What an integrator bakes into an image before onboarding: identity and state dir."""
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    path.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
                "capabilities": {"vendor": "Acme", "serialNumber": "SN-7"},
                "poll": {"interval": "5m"},
            }
        )
    )
    return path


def test_onboarding_end_to_end(tls_sim, partial_config, cli, pki, tmp_path):  # noqa: F811
    fp = openssl_fingerprint(pki.ca_cert)
    args = ("-c", str(partial_config), "onboard", "--wos-url", tls_sim.url)
    result = clean(cli(*args, "--ca-fingerprint", fp))
    assert result.returncode == 0, result.stderr
    assert fp in result.stdout
    # the configuration is complete, valid, and points at the stored credentials
    cfg = config.load_config(partial_config)
    config.check_files(cfg)
    assert cfg.poll.interval == 300  # what was there is kept
    assert cfg.wos.url == tls_sim.url and cfg.wos.token_url == tls_sim.token_url
    assert cfg.git.url == GIT["url"] and cfg.git.branch == "prod" and cfg.git.auth == "bearer"
    assert Path(cfg.wos.client_secret_file).read_text().strip() == CLIENT_SECRET
    assert Path(cfg.git.token_file).read_text().strip() == GIT_TOKEN
    for secret in (cfg.wos.client_secret_file, cfg.git.token_file):
        assert stat.S_IMODE(Path(secret).stat().st_mode) == 0o600
    assert Path(cfg.wos.ca_file).read_bytes() == pki.ca_cert.read_bytes()
    assert CLIENT_SECRET not in partial_config.read_text()
    # the WOS saw the identity, then the capabilities (with a token, over verified TLS)
    assert tls_sim.onboarded[0]["deviceId"] == "gw-test"
    assert tls_sim.onboarded[0]["serialNumber"] == "SN-7"
    assert tls_sim.capabilities["gw-test"]["properties"]["vendor"] == "Acme"
    assert tls_sim.token_requests() == 1
    # and the agent's client works with what onboarding wrote
    with WosClient(cfg.wos, cfg.device.id, cfg.state_dir) as client:
        client.post_status("d1", status_body("d1", "Installed", None, [], cfg.wos.status_case))
    assert len(tls_sim.statuses("d1")) == 1
    # re-running is safe: same configuration, capabilities updated (409 -> PUT)
    before = partial_config.read_bytes()
    again = clean(cli(*args, "--ca-fingerprint", fp.replace(":", "").lower()))
    assert again.returncode == 0, again.stderr
    assert partial_config.read_bytes() == before
    assert len(tls_sim.onboarded) == 2


def test_wrong_fingerprint_is_refused_and_changes_nothing(tls_sim, partial_config, cli, pki):  # noqa: F811
    before = partial_config.read_bytes()
    wrong = openssl_fingerprint(pki.other_ca_cert)
    result = clean(
        cli(
            "-c",
            str(partial_config),
            "onboard",
            "--wos-url",
            tls_sim.url,
            "--ca-fingerprint",
            wrong,
        )
    )
    assert result.returncode == 1
    assert "ONBOARDING_CA_MISMATCH" in result.stderr and "Traceback" not in result.stderr
    assert partial_config.read_bytes() == before
    assert not (partial_config.parent.parent / "state" / "credentials").exists()
    assert tls_sim.onboarded == [] and tls_sim.requests("/onboarding/", "POST") == []


def test_interactive_confirmation(tls_sim, partial_config, cli, pki):  # noqa: F811
    args = ("-c", str(partial_config), "onboard", "--wos-url", tls_sim.url)
    declined = clean(cli(*args, input="n\n"))
    assert declined.returncode == 1 and "ONBOARDING_DECLINED" in declined.stderr
    assert openssl_fingerprint(pki.ca_cert) in declined.stdout  # shown before the question
    no_answer = clean(cli(*args, input=""))
    assert no_answer.returncode == 1
    assert tls_sim.onboarded == []
    accepted = clean(cli(*args, input="yes\n"))
    assert accepted.returncode == 0, accepted.stderr
    assert len(tls_sim.onboarded) == 1


def test_device_id_from_command_line(tmp_path, cli, pki):  # noqa: F811
    git = {"url": "https://git.example.com/d.git", "username": "dev", "token": GIT_TOKEN}
    with simulator(ca_pem=pki.ca_cert.read_bytes(), git=git) as sim:  # plain http
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"device": {"state_dir": str(tmp_path / "state")}}))
        args = ("-c", str(path), "onboard", "--wos-url", sim.url)
        missing = clean(cli(*args, "--ca-fingerprint", "00"))
        assert missing.returncode == 2 and "--device-id" in missing.stderr
        result = clean(cli(*args, "--device-id", "gw-new", input="y\n"))
        assert result.returncode == 0, result.stderr
        assert "gw-new" in sim.capabilities
    cfg = config.load_config(path)
    assert cfg.device.id == "gw-new"
    assert (cfg.git.username, cfg.git.auth) == ("dev", "basic")


def test_wos_without_tls_trust_is_refused_after_pinning(tmp_path, pki):  # noqa: F811
    # The WOS serves a CA that did not sign its TLS certificate: pinned, then TLS fails.
    sim = simulator(
        tls=(str(pki.server_cert), str(pki.server_key)), ca_pem=pki.other_ca_cert.read_bytes()
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"device": {"state_dir": str(tmp_path / "state")}}))
    before = path.read_bytes()
    with sim, pytest.raises(WosError) as caught:
        onboarding.onboard(
            path,
            sim.url,
            device_id="gw-x",
            ca_fingerprint=onboarding.fingerprint(pki.other_ca_cert.read_bytes()),
        )
    assert caught.value.code == "WOS_TLS_FAILED"
    assert path.read_bytes() == before and sim.onboarded == []
    assert not (tmp_path / "state").exists()


# --- pure parts ------------------------------------------------------------------------------


def test_certificate_parsing(pki):  # noqa: F811
    pem = pki.ca_cert.read_bytes()
    encoded = base64.b64encode(pem).decode()
    assert onboarding.parse_certificate({"certificate": encoded}) == pem
    assert onboarding.parse_certificate({"certificate": pem.decode()}) == pem
    for bad in (
        None,
        {},
        {"certificate": ""},
        {"certificate": "!!!"},
        {"certificate": base64.b64encode(pem + pki.other_ca_cert.read_bytes()).decode()},
        {"certificate": base64.b64encode(pem.replace(b"M", b"N", 5)).decode()},
    ):
        with pytest.raises(OnboardingError) as caught:
            onboarding.parse_certificate(bad)
        assert caught.value.code == "ONBOARDING_CA_INVALID"


def test_fingerprint_matches_openssl(pki):  # noqa: F811
    fp = onboarding.fingerprint(pki.ca_cert.read_bytes())
    assert fp == openssl_fingerprint(pki.ca_cert)
    assert onboarding.same_fingerprint(fp.replace(":", "").lower(), fp)
    assert onboarding.same_fingerprint("SHA256:" + fp, fp)
    assert not onboarding.same_fingerprint("", fp)
    assert not onboarding.same_fingerprint(fp[:-2], fp)


def test_credentials_parsing():
    good = {"clientId": "c", "clientSecret": "sec-ret-1", "tokenUrl": "https://w/t", "git": GIT}
    creds = onboarding.parse_credentials(good)
    assert (creds.client_id, creds.git_url, creds.git_token) == ("c", GIT["url"], GIT_TOKEN)
    for key in ("clientId", "clientSecret", "tokenUrl", "git"):
        broken = {k: v for k, v in good.items() if k != key}
        with pytest.raises(OnboardingError) as caught:
            onboarding.parse_credentials(broken)
        assert caught.value.code == "ONBOARDING_BAD_ANSWER"
        assert "sec-ret-1" not in str(caught.value)
    with pytest.raises(OnboardingError):
        onboarding.parse_credentials({**good, "git": {"token": "x"}})


def test_unusable_answer_writes_nothing(tmp_path, pki):  # noqa: F811
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"device": {"id": "gw-x", "state_dir": str(tmp_path / "s")}}))
    before = path.read_bytes()
    sim = simulator(ca_pem=pki.ca_cert.read_bytes(), git={"url": "ftp://git/x"})
    with sim, pytest.raises(ConfigError) as caught:
        onboarding.onboard(path, sim.url, confirm=lambda fp: True)
    assert caught.value.key == "git.url"
    assert path.read_bytes() == before and not (tmp_path / "s").exists()
