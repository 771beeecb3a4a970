"""The Margo 1.0 wire, against the real HTTPS simulator on 127.0.0.1 with mutual TLS: the
WFM's SPIFFE identity checked before a request is sent, client certificate rotation, status
and capabilities bodies valid under the rc.3 OpenAPI, problem answers, and the outbox
through outages. Runs with both urllib3 versions (tests/run: both environments)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite import capabilities, mtls, options, proxy, valueclass, wfmbody, wfmclient
from margo_lite.config import CapabilitiesConfig, WosConfig
from margo_lite.devkit.svidca import SvidCA, client_id, wfm_id
from margo_lite.devkit.wfmsim import Problem, WfmSimulator
from margo_lite.errors import WosRejectedError, WosTransientError
from margo_lite.outbox import Outbox
from margo_lite.schedule import Backoff
from margo_lite.statestore import StateStore
from tests.support import openapi
from tests.support.proxyserver import ForwardProxy
from tests.support.wait import wait_for

DEVICE = "gw-wire"
PREFIX = "/v1alpha2/margo"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SvidCA:
    return SvidCA(tmp_path_factory.mktemp("trust-domain"))


@pytest.fixture(scope="module")
def wfm_cert(ca: SvidCA):
    return ca.wfm("wfm-server")


@pytest.fixture
def sim(ca: SvidCA, wfm_cert) -> Iterator[WfmSimulator]:
    with WfmSimulator(
        str(wfm_cert.cert), str(wfm_cert.key), str(ca.ca_file), wfm_id=wfm_id(), prefix=PREFIX
    ) as simulator:
        yield simulator


@pytest.fixture
def device(ca: SvidCA, tmp_path: Path):
    """The device's SVID, copied where the configuration names it (tests rotate it there)."""
    issued = ca.device(DEVICE, name=f"device-{tmp_path.name}")
    folder = tmp_path / "identity"
    folder.mkdir()
    cert, key = folder / "svid.pem", folder / "svid.key"
    shutil.copy(issued.cert, cert)
    shutil.copy(issued.key, key)
    key.chmod(0o600)
    return valueclass.replace(issued, cert=cert, key=key)


def _config(sim: WfmSimulator, ca: SvidCA, device, **extra) -> WosConfig:
    return WosConfig(
        url=sim.url,
        ca_file=str(ca.ca_file),
        client_cert=str(device.cert),
        client_key=str(device.key),
        timeout=5.0,
    )


def _client(sim, ca, device, tmp_path, *, server_id: str | None = None) -> wfmclient.WfmClient:
    cfg = _config(sim, ca, device)
    pools = mtls.WfmPools(
        cfg.client_cert,
        cfg.client_key,
        cfg.ca_file,
        server_id=server_id,
        retries=False,
        timeout=5.0,
    )
    return wfmclient.WfmClient(cfg, DEVICE, tmp_path / "state", pools=pools)


def _event(state: str, error: tuple[str, str] | None = None, components=(("web", None),)) -> dict:
    """A queued report as the agent queues it (the draft's shape, `wos.status_body`)."""
    code, message = error or ("", "")
    return {
        "apiVersion": "deployment.margo/v1",
        "kind": "DeploymentStatus",
        "deploymentId": "dep-1",
        "status": {"state": state, "error": {"code": code, "message": message}},
        "components": [{"name": n, "state": s or state} for n, s in components],
    }


# --- bodies --------------------------------------------------------------------------------


EVENTS = [
    _event("Pending", ("WAITING_FOR_DEPENDENCY", "waits for dep-0")),
    _event("Installing"),
    _event("Installed"),
    _event(
        "Failed",
        ("ENGINE_FAILED", "podman run: exit 125"),
        (("web", "Failed"), ("db", "Installed")),
    ),
    _event("Removing"),
    _event("Removed", components=()),
]


def test_every_status_body_is_valid_under_the_openapi_and_accepted(sim, ca, device, tmp_path):
    with _client(sim, ca, device, tmp_path) as client:
        for version, event in enumerate(EVENTS, start=1):
            client.post_status("dep-1", event, revision=str(version))
    sent = sim.statuses("dep-1")
    assert [b["status"]["state"] for b in sent] == [
        "pending", "installing", "installed", "failed", "removing", "removed"
    ]  # fmt: skip
    assert [b["adoptedManifestVersion"] for b in sent] == [1, 2, 3, 4, 5, 6]
    for body in sent:
        assert openapi.errors(body, *openapi.STATUS) == []
        assert body["deviceId"] == DEVICE
    failed = sent[3]
    assert failed["status"]["error"] == {
        "code": "ENGINE_FAILED",
        "source": "deployment",
        "message": "podman run: exit 125",
    }
    assert failed["components"] == [
        {
            "name": "web",
            "state": "failed",
            "error": {"code": "ENGINE_FAILED", "source": "web", "message": "podman run: exit 125"},
        },
        {"name": "db", "state": "installed"},
    ]
    assert "error" not in sent[2]["status"]
    # every call came with the device's certificate and identity, below the URL's prefix
    seen = sim.requests("/api/v1/deployments/dep-1/status", "POST")
    assert {(r.client_serial, r.client_id) for r in seen} == {(device.serial, client_id(DEVICE))}
    assert {r.tls_version for r in seen} == {"TLSv1.3"}


def test_the_schema_check_can_fail():
    body = wfmbody.status_v1("d", 1, "installed", None, [("web", "installed")])
    assert openapi.errors(body, *openapi.STATUS) == []
    assert openapi.errors({**body, "status": {"state": "Installed"}}, *openapi.STATUS)
    assert openapi.errors({**body, "adoptedManifestVersion": "1"}, *openapi.STATUS)
    caps = {"properties": {"id": "gw", "vendor": "", "modelNumber": "", "serialNumber": ""}}
    assert openapi.errors(caps, *openapi.CAPABILITIES) == []
    assert openapi.errors({**caps, "roles": []}, *openapi.CAPABILITIES)


def test_a_report_without_a_manifest_version_is_refused_locally(sim, ca, device, tmp_path):
    with _client(sim, ca, device, tmp_path) as client:
        with pytest.raises(WosRejectedError) as caught:
            client.post_status("dep-1", _event("Installed"))
        assert caught.value.code == "WFM_REPORT_INVALID"
        # the desired-state source's record of the accepted manifest is the fallback
        StateStore(tmp_path / "state").write_json("wfm/accepted.json", {"version": 9})
        client.post_status("dep-1", _event("Installed"))
    assert [b["adoptedManifestVersion"] for b in sim.statuses()] == [9]


def test_capabilities_body_is_valid_and_sent_when_changed(sim, ca, device, tmp_path):
    labels = {"site": "plant-3", "floor": 2, "lines": ["a", "b"]}
    cfg = CapabilitiesConfig(vendor="ACME", modelNumber="GW-1", serialNumber="SN-1", labels=labels)
    body = capabilities.discover_v1(DEVICE, tmp_path, cfg)
    assert body["labels"] == labels
    assert openapi.errors(body, *openapi.CAPABILITIES) == []
    props = body["properties"]
    assert props["memory"].endswith(("Mi", "Gi")) and props["storage"].endswith(("Mi", "Gi"))
    assert props["cpus"][0]["architecture"] in ("amd64", "arm64", "arm")
    assert props["supportedRuntimes"] == ["oci"]
    assert props["supportedDeploymentTypes"] == ["compose"]
    with _client(sim, ca, device, tmp_path) as client:
        assert client.send_capabilities(body) is True
        assert client.send_capabilities(body) is False  # unchanged: not sent
        assert client.send_capabilities(body, force=True) is True
    puts = sim.requests(f"/api/v1/capabilities/{DEVICE}", "PUT")
    assert [r.answer for r in puts] == [201, 200]
    assert sim.capabilities[DEVICE] == body


def test_binary_sizes_are_never_rounded_up():
    assert wfmbody.binary_size(16 << 30) == "16Gi"
    assert wfmbody.binary_size((16 << 30) - 1) == "16383Mi"
    assert wfmbody.binary_size(7_999_999_999) == "7629Mi"
    assert wfmbody.binary_size(0) == "0Mi"


def test_labels_outside_the_schema_are_named():
    ok = {"site": "a", "n": 1.5, "ok": True, "l": [1, 2]}
    assert options.label_map(ok, None) == ok
    for bad in ({"x": {"nested": 1}}, {"x": [1, "a"]}, {"": "a"}, {"x": None}, ["a"]):
        with pytest.raises(ValueError):
            options.label_map(bad, None)


# --- the WFM's identity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, uris",
    [
        ("wrong-id", (wfm_id(wfm="another-wfm"),)),
        ("other-domain", (wfm_id(trust_domain="evil.test"),)),
        ("no-san", ()),
        ("two-sans", (wfm_id(), wfm_id(wfm="another-wfm"))),
    ],
)
def test_a_wfm_with_another_identity_gets_no_request(sim, ca, device, tmp_path, name, uris):
    wrong = ca.issue(f"server-{name}", uris, server=True)
    sim.set_server_cert(str(wrong.cert), str(wrong.key))
    with _client(sim, ca, device, tmp_path) as client:
        with pytest.raises(WosTransientError) as caught:
            client.post_status("dep-1", _event("Installed"), revision="1")
        with pytest.raises(WosTransientError):
            client.send_capabilities({"properties": {"id": DEVICE}})
    assert caught.value.code == "WFM_SERVER_ID_MISMATCH"
    assert sim.requests() == []  # the simulator saw a handshake, never a request
    # both connections reached the simulator (it sees the handshake end on its own thread)
    wait_for(lambda: sim.handshakes + sim.failed_handshakes >= 2, what="both handshakes")


def test_the_configured_server_id_wins_over_the_derived_one(sim, ca, device, tmp_path):
    client = _client(sim, ca, device, tmp_path, server_id=wfm_id(wfm="configured"))
    with client, pytest.raises(WosTransientError, match="configured"):
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert sim.requests() == []
    with _client(sim, ca, device, tmp_path, server_id=wfm_id()) as client:
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert len(sim.statuses()) == 1


def test_the_wfm_refuses_a_client_of_another_wfm(sim, ca, tmp_path):
    stranger = ca.issue("stranger", [wfm_id(wfm="other") + "/client/x"])
    client = _client(sim, ca, stranger, tmp_path, server_id=wfm_id())
    with client, pytest.raises(WosTransientError) as caught:
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert caught.value.code == "WFM_FORBIDDEN"


# --- rotation ----------------------------------------------------------------------------------


def _replace(target: Path, source: Path) -> None:
    """As a provisioning agent writes a file: a new file renamed over the old."""
    temporary = target.with_suffix(".new")
    shutil.copy(source, temporary)
    os.chmod(temporary, 0o600)
    os.replace(temporary, target)


def test_a_rotated_client_certificate_is_presented_on_the_next_call(
    sim, ca, device, tmp_path, secret_free_logs
):
    with _client(sim, ca, device, tmp_path) as client:
        client.post_status("dep-1", _event("Installing"), revision="1")
        renewed = ca.device(DEVICE, name=f"renewed-{tmp_path.name}")
        # half-way through a rotation (the certificate is new, the key is not): the old pair
        # stays in use
        _replace(device.cert, renewed.cert)
        client.post_status("dep-1", _event("Installing"), revision="1")
        assert "not used (yet)" in secret_free_logs.text
        _replace(device.key, renewed.key)
        client.post_status("dep-1", _event("Installed"), revision="1")
        client.post_status("dep-1", _event("Installed"), revision="1")
    serials = [r.client_serial for r in sim.requests("/api/v1/deployments/", "POST")]
    assert serials == [device.serial, device.serial, renewed.serial, renewed.serial]
    assert "PRIVATE KEY" not in secret_free_logs.raw_text


# --- problem answers and outages ---------------------------------------------------------------


def test_a_retryable_problem_waits_as_long_as_retry_after_says(
    sim, ca, device, tmp_path, secret_free_logs
):
    sim.problem = Problem(status=503, retryable=True, retry_after=40, retry_after_seconds=5)
    sim.fault = "problem"
    store = StateStore(tmp_path / "state")
    outbox = Outbox(store, 100, backoff=Backoff(base=1.0, cap=300.0), rand=lambda: 0.0)
    outbox.add("dep-1", _event("Installed"), revision="2")
    with _client(sim, ca, device, tmp_path) as client:
        result = outbox.flush(client, now=1000.0)
        assert result.error is not None and result.error.code == "WFM_RETRY_LATER"
        assert result.error.retry_after == 40.0  # the header, not the body's advisory 5
        assert result.not_before == 1040.0
        sim.fault = None
        assert outbox.flush(client, now=1039.0).skipped
        assert outbox.flush(client, now=1040.0).delivered == 1
    text = secret_free_logs.text
    assert "problem-types#unavailable" in text and "Service unavailable" in text
    assert "simulated fault" in text


def test_the_advisory_retry_after_seconds_when_no_header(sim, ca, device, tmp_path):
    sim.problem = Problem(status=429, retryable=True, retry_after=None, retry_after_seconds=12)
    sim.fault = "problem"
    client = _client(sim, ca, device, tmp_path)
    with client, pytest.raises(WosTransientError) as caught:
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert caught.value.retry_after == 12.0


def test_a_problem_that_is_not_retryable_is_a_refusal_even_for_5xx(sim, ca, device, tmp_path):
    sim.problem = Problem(status=500, retryable=False, retry_after=None)
    sim.fault = "problem"
    client = _client(sim, ca, device, tmp_path)
    with client, pytest.raises(WosRejectedError) as caught:
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert caught.value.status == 500 and "Service unavailable" in caught.value.message


def test_hostile_problem_bodies_are_cut_and_masked():
    huge = json.dumps({"type": "x" * 100000, "title": "t\x1b[31m", "detail": ["no"]}).encode()
    problem = wfmbody.parse_problem(huge, "application/problem+json")
    assert problem is not None and len(problem.type) <= 300 and "\x1b" not in problem.title
    assert problem.detail == "" and problem.retryable is None
    for body in (b"", b"[]", b"{", b'{"a":' * 10000, "\udcff".encode(errors="surrogatepass")):
        assert wfmbody.parse_problem(body, "application/problem+json") is None


def test_fifty_outages_lose_no_report_and_keep_their_order(sim, ca, device, tmp_path):
    store = StateStore(tmp_path / "state")
    outbox = Outbox(store, 1000, backoff=Backoff(base=1.0, cap=4.0), rand=lambda: 0.0)
    expected: list[tuple[str, str, int]] = []
    now = 0.0
    states = ["Installing", "Installed", "Failed", "Installing", "Installed"]
    with _client(sim, ca, device, tmp_path) as client:
        for round_ in range(50):
            for dep in ("dep-a", "dep-b"):
                state = states[(round_ + len(dep)) % len(states)]
                error = ("ENGINE_FAILED", f"round {round_}") if state == "Failed" else None
                outbox.add(dep, _event(state, error), revision=str(round_ + 1))
                expected.append((dep, state.lower(), round_ + 1))
            sim.fault = "down"
            result = outbox.flush(client, now=now)
            assert result.error is not None and result.delivered == 0
            now += 10.0
            sim.fault = None
            while len(outbox):
                assert outbox.flush(client, now=now).error is None
    delivered = [
        (r.path.split("/")[4], r.json()["status"]["state"], r.json()["adoptedManifestVersion"])
        for r in sim.requests("/api/v1/deployments/", "POST")
    ]
    assert delivered == expected
    for body in sim.statuses():
        assert openapi.errors(body, *openapi.STATUS) == []
    # one handshake per outage's recovery at most: connections are reused in between
    assert sim.handshakes <= 2 * 50 + 2


def test_a_key_others_can_read_is_named_in_the_log(sim, ca, device, tmp_path, secret_free_logs):
    device.key.chmod(0o644)
    with _client(sim, ca, device, tmp_path) as client:
        client.post_status("dep-1", _event("Installed"), revision="1")
    assert f"{device.key} is readable by others: make it mode 0600" in secret_free_logs.text


def test_a_queued_report_keeps_its_manifest_version_across_a_restart(sim, ca, device, tmp_path):
    store = StateStore(tmp_path / "state")
    Outbox(store, 10).add("dep-1", _event("Installed"), revision="41")
    StateStore(tmp_path / "state").write_json("wfm/accepted.json", {"version": 42})
    restarted = Outbox(StateStore(tmp_path / "state"), 10)  # as after a power cut
    with _client(sim, ca, device, tmp_path) as client:
        assert restarted.flush(client).delivered == 1
    assert [b["adoptedManifestVersion"] for b in sim.statuses()] == [41]


def test_through_the_site_proxy_the_identity_check_is_end_to_end(sim, ca, device, tmp_path):
    """CONNECT through a real squid: TLS and the SPIFFE check are between margo-lite and the
    WFM, so a wrong WFM behind the proxy gets no request either."""
    port = int(sim.url.split(":")[2].split("/")[0])
    with ForwardProxy() as squid:
        via = proxy.resolve(proxy.Proxy("127.0.0.1", squid.port, None), (), False, {}, None)
        cfg = _config(sim, ca, device)
        pools = mtls.WfmPools(
            cfg.client_cert, cfg.client_key, cfg.ca_file, proxies=via, retries=False, timeout=5.0
        )
        with wfmclient.WfmClient(cfg, DEVICE, tmp_path / "state", pools=pools) as client:
            client.post_status("dep-1", _event("Installed"), revision="1")
            wrong = ca.issue("server-behind-proxy", [wfm_id(wfm="impostor")], server=True)
            sim.set_server_cert(str(wrong.cert), str(wrong.key))
            client.pools.clear()
            with pytest.raises(WosTransientError) as caught:
                client.post_status("dep-1", _event("Installed"), revision="2")
        tunnelled = wait_for(lambda: len(squid.entries(port)) >= 2, what="both CONNECTs logged")
    assert tunnelled and caught.value.code == "WFM_SERVER_ID_MISMATCH"
    assert [b["adoptedManifestVersion"] for b in sim.statuses()] == [1]
    assert len(sim.requests()) == 1


def test_a_wfm_that_speaks_tls_1_2_only_is_reached_and_checked_the_same(
    ca, wfm_cert, device, tmp_path
):
    with WfmSimulator(
        str(wfm_cert.cert),
        str(wfm_cert.key),
        str(ca.ca_file),
        wfm_id=wfm_id(),
        max_tls=ssl.TLSVersion.TLSv1_2,
    ) as old:
        with _client(old, ca, device, tmp_path) as client:
            client.post_status("dep-1", _event("Installed"), revision="1")
        wrong = ca.issue("server-tls12-wrong", [wfm_id(wfm="impostor")], server=True)
        old.set_server_cert(str(wrong.cert), str(wrong.key))
        with _client(old, ca, device, tmp_path) as client, pytest.raises(WosTransientError):
            client.post_status("dep-1", _event("Installed"), revision="2")
    assert [r.tls_version for r in old.requests()] == ["TLSv1.2"]
