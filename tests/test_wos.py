"""The Device API client against the WOS simulator on 127.0.0.1: bodies, auth, TLS, errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from margo_lite import __version__, logs, signing
from margo_lite.config import WosConfig
from margo_lite.errors import WosError, WosRejectedError, WosTransientError
from margo_lite.outbox import Outbox
from margo_lite.statestore import StateStore
from margo_lite.wos import STATES, WosClient, encode_body, status_body
from tests.conftest import ROOT
from tests.support.wait import wait_for
from tests.support.wos import (
    CLIENT_ID,
    CLIENT_SECRET,
    find_secrets,
    pki,  # noqa: F401 (fixture)
    secret_free_logs,  # noqa: F401 (autouse fixture)
    simulator,
    write_secret,
)

DEPLOYMENT = "a3e2f5dc-912e-494f-8395-52cf3769bc06"


def wos_config(sim, tmp_path: Path, **changes) -> WosConfig:
    values = {"url": sim.url, "timeout": 5.0}
    if sim.client_id:
        values.update(
            token_url=sim.token_url,
            client_id=CLIENT_ID,
            client_secret_file=str(write_secret(tmp_path)),
        )
    values.update(changes)
    return WosConfig(**values)


def installing() -> dict:
    return status_body(
        DEPLOYMENT,
        "Installing",
        None,
        [("digitron-orchestrator", "Installed"), ("database-services", "Installing")],
        "capitalized",
    )


# --- the body ------------------------------------------------------------------------------


def test_status_body_is_the_contract_example():
    assert installing() == {
        "apiVersion": "deployment.margo/v1",
        "kind": "DeploymentStatus",
        "deploymentId": DEPLOYMENT,
        "status": {"state": "Installing", "error": {"code": "", "message": ""}},
        "components": [
            {"name": "digitron-orchestrator", "state": "Installed"},
            {"name": "database-services", "state": "Installing"},
        ],
    }


def test_status_body_lowercase_and_errors():
    body = status_body("d1", "Failed", ("ENGINE_FAILED", "boom"), [("web", "Failed")], "lowercase")
    assert body["status"] == {
        "state": "failed",
        "error": {"code": "ENGINE_FAILED", "message": "boom"},
    }
    assert body["components"] == [{"name": "web", "state": "failed"}]
    for state in STATES:
        error = ("WAITING", "reason") if state in ("Pending", "Failed") else None
        assert status_body("d", state, error, [], "capitalized")["status"]["state"] == state


@pytest.mark.parametrize("state", ["Failed", "Pending"])
def test_failed_and_pending_need_a_reason(state):
    with pytest.raises(ValueError, match="needs an error code"):
        status_body("d", state, None, [], "capitalized")


def test_status_body_refuses_unknown_state_and_masks_secrets():
    with pytest.raises(ValueError, match="unknown deployment state"):
        status_body("d", "Running", None, [], "capitalized")
    logs.register_secret(CLIENT_SECRET)
    body = status_body(
        "d", "Failed", ("X", f"token {CLIENT_SECRET} " + "x" * 5000), [], "lowercase"
    )
    message = body["status"]["error"]["message"]
    assert CLIENT_SECRET not in message and len(message) == 1000


# --- delivery, against the simulator --------------------------------------------------------


def test_status_reaches_simulator_field_for_field(tmp_path):
    with (
        simulator(client_id=None) as sim,
        WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client,
    ):
        body = installing()
        client.post_status(DEPLOYMENT, body)
        lowercase = status_body("d/2", "Removed", None, [("web", "Removed")], "lowercase")
        client.post_status("d/2", lowercase)
        first, second = sim.requests("/device/")
    assert first.path == f"/device/gw-test/deployment/{DEPLOYMENT}/status"
    assert first.json() == body and first.body == encode_body(body)
    assert first.header("User-Agent") == f"margo-lite/{__version__}"
    assert first.header("Content-Type") == "application/json"
    assert first.header("Authorization") is None
    assert second.path == "/device/gw-test/deployment/d%2F2/status"
    assert sim.statuses("d/2") == [lowercase]


def test_connections_are_reused(tmp_path):
    with simulator() as sim, WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client:
        for _ in range(3):
            client.post_status(DEPLOYMENT, installing())
        ports = {r.client for r in sim.requests()}
    assert len(sim.requests()) == 4  # one token, three reports
    assert len(ports) == 1


def test_token_cached_then_one_refresh_after_expiry_on_the_wos(tmp_path):
    with simulator() as sim, WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client:
        client.post_status(DEPLOYMENT, installing())
        client.post_status(DEPLOYMENT, installing())
        assert sim.token_requests() == 1
        sim.revoke_tokens()  # the token expires on the WOS's side mid-run
        client.post_status(DEPLOYMENT, installing())
        answers = [r.answer for r in sim.requests("/device/")]
        assert sim.token_requests() == 2
    assert answers == [201, 201, 401, 201]
    assert len(sim.statuses()) == 3


def test_token_refreshed_shortly_before_expires_in(tmp_path):
    now = [1000.0]
    with simulator(token_lifetime=100) as sim:
        client = WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path, clock=lambda: now[0])
        client.post_status(DEPLOYMENT, installing())
        now[0] += 85  # within the lifetime, before the refresh margin
        client.post_status(DEPLOYMENT, installing())
        assert sim.token_requests() == 1
        now[0] += 6  # 91s: less than the 10s margin is left
        client.post_status(DEPLOYMENT, installing())
        assert sim.token_requests() == 2
        assert [r.answer for r in sim.requests("/device/")] == [201, 201, 201]
        client.close()


def test_wrong_client_secret_is_transient_and_secret_free(tmp_path):
    with simulator() as sim:
        cfg = wos_config(sim, tmp_path)
        Path(cfg.client_secret_file).write_text("not-the-secret-at-all\n")
        with (
            WosClient(cfg, "gw-test", tmp_path) as client,
            pytest.raises(WosTransientError) as caught,
        ):
            client.post_status(DEPLOYMENT, installing())
    assert caught.value.code == "WOS_AUTH_FAILED"
    assert "not-the-secret-at-all" not in str(caught.value)
    assert sim.requests("/device/") == []


def test_persistent_401_costs_one_retry_then_is_transient(tmp_path):
    with simulator(client_id=None) as sim:
        sim.fault = "401"
        with (
            WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client,
            pytest.raises(WosTransientError) as caught,
        ):
            client.post_status(DEPLOYMENT, installing())
    assert caught.value.code == "WOS_UNAUTHORIZED"
    assert len(sim.requests()) == 1  # without a token endpoint there is nothing to refresh


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        ("500", WosTransientError, "WOS_SERVER_ERROR"),
        ("503", WosTransientError, "WOS_SERVER_ERROR"),
        ("408", WosTransientError, "WOS_SERVER_ERROR"),
        ("429", WosTransientError, "WOS_SERVER_ERROR"),
        ("400", WosRejectedError, "WOS_REJECTED"),
        ("404", WosRejectedError, "WOS_REJECTED"),
        ("down", WosTransientError, "WOS_UNREACHABLE"),
        ("slow", WosTransientError, "WOS_UNREACHABLE"),
    ],
)
def test_failures_are_classified(tmp_path, fault, kind, code):
    with simulator(client_id=None) as sim:
        sim.fault, sim.slow_seconds = fault, 3.0
        cfg = wos_config(sim, tmp_path, timeout=0.5)
        with WosClient(cfg, "gw-test", tmp_path) as client, pytest.raises(WosError) as caught:
            client.post_status(DEPLOYMENT, installing())
    assert type(caught.value) is kind and caught.value.code == code
    if fault.isdigit():
        assert caught.value.status == int(fault)
        assert "simulated fault" in caught.value.body


def test_nothing_listening_is_transient(tmp_path):
    with simulator(client_id=None) as sim:
        url = sim.url
    cfg = WosConfig(url=url, timeout=2.0)
    with WosClient(cfg, "gw-test", tmp_path) as client, pytest.raises(WosTransientError) as caught:
        client.post_status(DEPLOYMENT, installing())
    assert caught.value.code == "WOS_UNREACHABLE"


# --- TLS -----------------------------------------------------------------------------------


def test_tls_verified_against_ca_file(tmp_path, pki):  # noqa: F811
    tls = (str(pki.server_cert), str(pki.server_key))
    with simulator(tls=tls) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        with WosClient(
            wos_config(sim, tmp_path, ca_file=str(pki.ca_cert)), "gw-test", tmp_path
        ) as client:
            client.post_status(DEPLOYMENT, installing())
        for ca_file in (None, str(pki.other_ca_cert)):  # system store; another CA
            with (
                WosClient(
                    wos_config(sim, tmp_path, ca_file=ca_file), "gw-test", tmp_path
                ) as client,
                pytest.raises(WosTransientError) as caught,
            ):
                client.post_status(DEPLOYMENT, installing())
            assert caught.value.code == "WOS_TLS_FAILED"
        assert len(sim.statuses()) == 1


# --- capabilities --------------------------------------------------------------------------


def caps(memory: float) -> dict:
    return {
        "apiVersion": "device.margo/v1",
        "kind": "DeviceCapabilities",
        "properties": {"id": "gw-test", "resources": {"memory": memory}},
    }


def test_capabilities_post_first_put_when_changed_skip_when_same(tmp_path):
    with simulator() as sim, WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client:
        assert client.send_capabilities(caps(1.0)) is True
        assert client.send_capabilities(caps(1.0)) is False
        assert client.send_capabilities(caps(2.0)) is True
        methods = [r.method for r in sim.requests("/device/")]
        assert methods == ["POST", "PUT"]
        assert sim.capabilities["gw-test"] == caps(2.0)
        # A device that lost its state: POST meets 409, then PUT.
        other = tmp_path / "other"
        other.mkdir()
        with WosClient(wos_config(sim, other), "gw-test", other) as fresh:
            assert fresh.send_capabilities(caps(3.0)) is True
        answers = [(r.method, r.answer) for r in sim.requests("/device/")][2:]
    assert answers == [("POST", 409), ("PUT", 201)]


def test_capabilities_rejection_is_not_remembered(tmp_path):
    with simulator() as sim, WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client:
        with pytest.raises(WosRejectedError):
            client.send_capabilities({"kind": "Wrong"})
        assert client.send_capabilities(caps(1.0)) is True
        assert [r.method for r in sim.requests("/device/")] == ["POST", "POST"]


# --- payload signing -----------------------------------------------------------------------


def test_signed_request_verifies_with_openssl(tmp_path, pki):  # noqa: F811
    with simulator() as sim:
        cfg = wos_config(
            sim, tmp_path, signing_key=str(pki.device_key), signing_cert=str(pki.device_cert)
        )
        with WosClient(cfg, "gw-test", tmp_path) as client:
            client.post_status(DEPLOYMENT, installing())
        report = sim.requests("/device/")[0]
        token_request = sim.requests("/oauth/token")[0]
    header = report.header("X-Payload-Signature")
    public_pem, signature = signing.split_header(header)
    (tmp_path / "pub.pem").write_bytes(public_pem)
    (tmp_path / "sig.bin").write_bytes(signature)
    (tmp_path / "body").write_bytes(report.body)
    verify = [
        "openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
        "-signature", str(tmp_path / "sig.bin"), str(tmp_path / "body"),
    ]  # fmt: skip
    result = subprocess.run(verify, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "Verified OK" in result.stdout
    (tmp_path / "body").write_bytes(report.body.replace(b"Installing", b"Installed!"))
    assert subprocess.run(verify, capture_output=True, timeout=30).returncode != 0
    # the key in the header is the certificate's
    cert_key = subprocess.run(
        ["openssl", "x509", "-in", str(pki.device_cert), "-noout", "-pubkey"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert public_pem.strip() == cert_key.strip()
    assert signing.verify(token_request.header("X-Payload-Signature"), token_request.body)


def test_signing_key_must_match_certificate(tmp_path, pki):  # noqa: F811
    cfg = WosConfig(
        url="http://127.0.0.1:9",
        signing_key=str(pki.device_key),
        signing_cert=str(pki.other_device_cert),
    )
    with pytest.raises(WosError) as caught:
        WosClient(cfg, "gw-test", tmp_path)
    assert caught.value.code == "SIGNING_KEY_MISMATCH"


def test_unsigned_without_configuration(tmp_path):
    with (
        simulator(client_id=None) as sim,
        WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client,
    ):
        client.post_status(DEPLOYMENT, installing())
        assert sim.requests()[0].header("X-Payload-Signature") is None


def test_loose_secret_file_is_warned_about(tmp_path, secret_free_logs):  # noqa: F811
    with simulator() as sim:
        cfg = wos_config(sim, tmp_path)
        Path(cfg.client_secret_file).chmod(0o644)
        with WosClient(cfg, "gw-test", tmp_path) as client:
            client.post_status(DEPLOYMENT, installing())
    assert "readable by others" in secret_free_logs.text


def test_log_capture_sees_what_the_mask_hides(secret_free_logs):  # noqa: F811
    # The secret check of every WOS test reads the records before masking too: prove it.
    logs.register_secret(CLIENT_SECRET)
    logging.getLogger("margo_lite.test").warning("value %s", CLIENT_SECRET)
    assert CLIENT_SECRET not in secret_free_logs.text
    assert find_secrets(secret_free_logs.raw_text) == [CLIENT_SECRET]
    secret_free_logs.raw.lines.clear()  # this one leak was on purpose


def test_simulator_runs_standalone(tmp_path):
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out.open("w") as stdout:
        sim = subprocess.Popen(
            [sys.executable, "-m", "margo_lite.devkit.wossim"], stdout=stdout, env=env
        )
    try:
        first = wait_for(lambda: out.read_text().splitlines(), what="the simulator's address")
        url = json.loads(first[0])["listening"]
        with WosClient(WosConfig(url=url, timeout=5.0), "gw-test", tmp_path) as client:
            client.post_status(DEPLOYMENT, installing())
        lines = wait_for(lambda: out.read_text().splitlines()[1:], what="the request line")
        assert json.loads(lines[0])["body"] == installing()
    finally:
        sim.terminate()
        assert sim.wait(timeout=30) == 0


def test_agent_modules_do_not_load_the_simulator():
    code = (
        "import sys, margo_lite.wos, margo_lite.outbox, margo_lite.capabilities, "
        "margo_lite.onboarding, margo_lite.signing, margo_lite.wfmclient, margo_lite.mtls\n"
        "assert not [m for m in sys.modules if m.startswith('margo_lite.devkit')]\n"
        "assert 'http.server' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()


def test_capabilities_put_meets_404_then_post(tmp_path):
    with simulator() as sim, WosClient(wos_config(sim, tmp_path), "gw-test", tmp_path) as client:
        client.send_capabilities(caps(1.0))
        sim.capabilities.clear()  # the WOS lost them
        assert client.send_capabilities(caps(2.0)) is True
        answers = [(r.method, r.answer) for r in sim.requests("/device/")]
        assert answers == [("POST", 201), ("PUT", 404), ("POST", 201)]
        assert sim.capabilities["gw-test"] == caps(2.0)


def test_missing_client_secret_file_is_an_error_reports_wait_for(tmp_path):
    with simulator() as sim:
        cfg = wos_config(sim, tmp_path, client_secret_file=str(tmp_path / "missing"))
        with WosClient(cfg, "gw-test", tmp_path) as client:
            with pytest.raises(WosError) as caught:
                client.post_status(DEPLOYMENT, installing())
            assert caught.value.code == "WOS_AUTH_CONFIG"
            box = Outbox(StateStore(tmp_path / "state"), 10)
            box.add(DEPLOYMENT, installing())
            result = box.flush(client, now=0.0)
        assert result.error is not None and result.dropped == 0 and len(box) == 1
        assert sim.requests() == []
