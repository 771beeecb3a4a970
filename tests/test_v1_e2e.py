"""The agent end to end in the Margo 1.0 profile: `margo-lite run` against the v1 WFM
simulator over mutual TLS, Compose OCI artifacts in Debian's docker-registry over TLS, podman.

Each test checks what a user checks: what the app answers over HTTP, the containers, the
status reports the WFM received (each valid against the rc.3 OpenAPI), and the state folder.
One trust domain and one registry serve the module; each test has its own WFM, device id
and ports.
"""

from __future__ import annotations

import os
import signal

import pytest

from margo_lite.devkit.registry import LocalRegistry
from margo_lite.devkit.svidca import SvidCA, wfm_id
from margo_lite.devkit.wfmsim import Problem, WfmSimulator
from margo_lite.statestore import StateStore
from tests.support import openapi
from tests.support.engines import free_port, http_get
from tests.support.rig import wait_state
from tests.support.v1rig import V1Rig, push_packages
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.engine,
    pytest.mark.skipif(not LocalRegistry.available(), reason="needs docker-registry"),
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SvidCA:
    return SvidCA(tmp_path_factory.mktemp("trust-domain"))


@pytest.fixture(scope="module")
def repository(ca: SvidCA, tmp_path_factory: pytest.TempPathFactory):
    cert = ca.issue("registry", [], server=True)
    with LocalRegistry(
        tmp_path_factory.mktemp("registry"), cert.cert, cert.key, ca.ca_file
    ) as registry:
        yield push_packages(registry)


@pytest.fixture
def sim(ca: SvidCA):
    wfm = ca.wfm()
    with WfmSimulator(str(wfm.cert), str(wfm.key), str(ca.ca_file), wfm_id=wfm_id()) as s:
        yield s


@pytest.fixture
def rig(tmp_path, request, ca, sim, repository, podman_environ):
    device = f"gw-{request.node.name[5:30].strip('_[]').replace('_', '-')}-{os.getpid()}"
    r = V1Rig(tmp_path, podman_environ, sim, ca, ca.device(device), repository, device=device)
    try:
        yield r
    finally:
        r.cleanup()


def reports(rig: V1Rig, dep_id: str | None = None) -> list[dict]:
    """The status bodies the WFM accepted, each checked against the rc.3 schema."""
    bodies = rig.sim.statuses(dep_id or rig.deployment_id)
    for body in bodies:
        assert openapi.errors(body, *openapi.STATUS) == [], body
    return bodies


def states(bodies: list[dict]) -> list[tuple[str, int]]:
    return [(b["status"]["state"], b["adoptedManifestVersion"]) for b in bodies]


def serves(port: int, text: str):
    return lambda: (http_get(port) or "").strip() == text


def not_failed(rig: V1Rig) -> None:
    """Stop waiting at once when the WFM heard `failed` or the agent died (RuntimeError
    is not retried by wait_for)."""
    bodies = rig.sim.statuses(rig.deployment_id)
    if bodies and bodies[-1]["status"]["state"] == "failed":
        raise RuntimeError(f"failed: {bodies[-1]['status']}\n{rig.log_text()[-3000:]}")
    if rig.agent is not None and rig.agent.poll() is not None:
        raise RuntimeError(f"the agent exited\n{rig.log_text()[-3000:]}")


def accepted_version(rig: V1Rig) -> int:
    return StateStore(rig.state_dir).read_json("wfm/accepted.json")["version"]


def logged(rig: V1Rig, code: str) -> bool:
    return code in rig.log_text()


def settle(rig: V1Rig, port: int, text: str, version: int) -> None:
    """Wait until the app answers `text` and the WFM heard `installed` for `version`."""
    try:
        wait_for(
            lambda: not_failed(rig) or serves(port, text)(),
            timeout=120,
            what=f"the app to answer {text!r}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{rig.log_text()[-3000:]}") from None

    def reported():
        bodies = reports(rig)
        return bodies and states(bodies)[-1] == ("installed", version)

    wait_for(reported, timeout=120, what=f"installed for manifest {version}")


def test_install_parameter_update_package_update_and_removal(rig):
    port = free_port()
    v1 = rig.publish(rig.document(greeting="first", port=port))
    rig.start()
    settle(rig, port, "1.0.0 first", v1)
    assert [s for s, _ in states(reports(rig))] == ["pending", "installing", "installed"]
    assert {v for _, v in states(reports(rig))} == {v1}
    assert len(rig.running(rig.deployment_id)) == 1

    mark = len(reports(rig))
    v2 = rig.publish(rig.document(greeting="second", port=port))
    settle(rig, port, "1.0.0 second", v2)
    assert states(reports(rig)[mark:]) == [("installing", v2), ("installed", v2)]

    mark = len(reports(rig))
    v3 = rig.publish(rig.document(greeting="second", port=port, revision="2.0.0"))
    settle(rig, port, "2.0.0 second", v3)
    assert states(reports(rig)[mark:]) == [("installing", v3), ("installed", v3)]
    assert len(rig.running(rig.deployment_id)) == 1

    mark = len(reports(rig))
    v4 = rig.publish()
    wait_state(rig, rig.deployment_id, "removed")
    assert states(reports(rig)[mark:]) == [("removing", v4), ("removed", v4)]
    wait_for(lambda: not rig.containers(), what="no container left")
    assert http_get(port) is None
    assert accepted_version(rig) == v4
    assert rig.stop() == 0


def test_idle_polls_are_answered_304_and_write_nothing(rig):
    port = free_port()
    v1 = rig.publish(rig.document(greeting="idle", port=port))
    rig.start()
    settle(rig, port, "1.0.0 idle", v1)

    def polls():
        return [r for r in rig.sim.requests("/api/v1/deployments", "GET") if r.path.count("/") == 3]

    first = len(polls())
    wait_for(lambda: len(polls()) > first, what="a poll after the install")
    before, reported = rig.files(), len(reports(rig))
    mark = len(polls())
    wait_for(lambda: len(polls()) >= mark + 5, timeout=60, what="5 idle polls")
    idle = polls()[mark:]
    assert [r.answer for r in idle] == [304] * len(idle)
    assert all(r.headers.get("If-None-Match") for r in idle)
    assert rig.files() == before
    assert len(reports(rig)) == reported
    assert (http_get(port) or "").strip() == "1.0.0 idle"


@pytest.mark.parametrize("tamper", ["document", "bundle"])
def test_a_tampered_digest_applies_nothing_and_what_runs_keeps_running(rig, tamper):
    port, other_port = free_port(), free_port()
    v1 = rig.publish(rig.document(greeting="good", port=port))
    rig.start()
    settle(rig, port, "1.0.0 good", v1)
    reported = len(reports(rig))

    rig.sim.tamper = tamper
    other = "0f0f0f0f-0000-4000-8000-" + os.urandom(6).hex()
    evil = [rig.document(greeting="evil", port=port)]
    if tamper == "bundle":  # both documents new: the agent asks for the bundle
        evil.append(rig.document(greeting="evil", port=other_port, dep_id=other))
    rig.publish(*evil)
    wait_for(lambda: logged(rig, "WFM_DIGEST_MISMATCH"), timeout=60, what="the coded error")
    fetched = (
        "/api/v1/bundles/" if tamper == "bundle" else f"/api/v1/deployments/{rig.deployment_id}/"
    )
    assert rig.sim.requests(fetched, "GET")
    polls = len(rig.sim.requests("/api/v1/deployments", "GET"))
    wait_for(
        lambda: len(rig.sim.requests("/api/v1/deployments", "GET")) > polls + 1,
        what="polls after the refusal",
    )
    assert (http_get(port) or "").strip() == "1.0.0 good"
    assert http_get(other_port) is None
    assert len(reports(rig)) == reported
    assert rig.sim.statuses(other) == []
    assert accepted_version(rig) == v1
    assert len(rig.running(rig.deployment_id)) == 1


def test_a_rollback_and_a_replay_are_refused(rig):
    port = free_port()
    v5 = rig.publish(rig.document(greeting="five", port=port), version=5)
    rig.start()
    settle(rig, port, "1.0.0 five", v5)
    replayed = rig.sim.manifest()
    v6 = rig.publish(rig.document(greeting="six", port=port))
    settle(rig, port, "1.0.0 six", v6)
    reported = len(reports(rig))

    rig.publish(rig.document(greeting="rolled-back", port=port), version=4)
    wait_for(lambda: logged(rig, "WFM_ROLLBACK_REFUSED"), timeout=60, what="the rollback refused")
    refusals = rig.log_text().count("WFM_ROLLBACK_REFUSED")
    rig.sim.replay = replayed  # manifest 5's exact bytes, served again
    wait_for(
        lambda: rig.log_text().count("WFM_ROLLBACK_REFUSED") > refusals + 1,
        timeout=60,
        what="the replay refused",
    )
    # The app answers (a busy machine may be slow to), and it is still manifest 6's.
    answer = wait_for(lambda: http_get(port), timeout=30, what="the app to answer")
    assert answer.strip() == "1.0.0 six", rig.log_text()[-3000:]
    assert len(reports(rig)) == reported
    assert accepted_version(rig) == v6


def test_a_wfm_with_the_wrong_spiffe_id_gets_no_request(rig, ca):
    rogue = ca.wfm("rogue", spiffe="spiffe://margo-lite.test/margo/wfm/rogue")
    rig.sim.set_server_cert(str(rogue.cert), str(rogue.key))
    rig.publish(rig.document(greeting="never", port=free_port()))
    rig.start()
    wait_for(lambda: logged(rig, "WFM_SERVER_ID_MISMATCH"), timeout=60, what="the refusal")
    wait_for(lambda: rig.sim.handshakes >= 2, timeout=60, what="a second attempt")
    assert rig.sim.requests() == []
    assert rig.containers() == []
    assert rig.agent.poll() is None


def test_a_client_certificate_rotated_on_disk_is_presented_without_a_restart(rig, ca):
    port = free_port()
    v1 = rig.publish(rig.document(greeting="before", port=port))
    agent = rig.start()
    settle(rig, port, "1.0.0 before", v1)
    assert {r.client_serial for r in rig.sim.requests()} == {rig.svid.serial}

    renewed = ca.device(rig.device, name=f"renewed-{rig.device}", key=rig.svid.key)
    os.replace(renewed.cert, rig.svid.cert)
    mark = len(rig.sim.requests())
    wait_for(
        lambda: any(r.client_serial == renewed.serial for r in rig.sim.requests()[mark:]),
        timeout=60,
        what="a request with the renewed certificate",
    )
    later = [r for r in rig.sim.requests()[mark:] if r.client_serial == renewed.serial]
    v2 = rig.publish(rig.document(greeting="after", port=port))
    settle(rig, port, "1.0.0 after", v2)
    after = rig.sim.requests()[rig.sim.requests().index(later[0]) :]
    assert {r.client_serial for r in after} == {renewed.serial}
    assert agent.poll() is None and rig.agent is agent


def test_a_retryable_problem_answer_is_waited_out_and_the_report_delivered(rig):
    port = free_port()
    status_path = f"/api/v1/deployments/{rig.deployment_id}/status"
    rig.sim.problem = Problem(status=503, retryable=True, retry_after=2, paths=(status_path,))
    rig.sim.fault = "problem"
    v1 = rig.publish(rig.document(greeting="patient", port=port))
    rig.start()
    wait_for(lambda: len(rig.sim.requests(status_path)) >= 2, timeout=120, what="two refusals")
    refused = rig.sim.requests(status_path)
    assert {r.answer for r in refused} == {503}
    assert refused[1].at - refused[0].at >= 2  # Retry-After: 2
    rig.sim.fault = None
    settle(rig, port, "1.0.0 patient", v1)
    assert [s for s, _ in states(reports(rig))] == ["pending", "installing", "installed"]


def test_reports_queued_through_50_wfm_transitions_arrive_in_order(rig):
    port = free_port()
    v = rig.publish(rig.document(greeting="g0", port=port))
    rig.start()
    settle(rig, port, "1.0.0 g0", v)
    for i in range(1, 26):
        rig.sim.fault = None  # up: the agent reads the new manifest ...
        v = rig.publish(rig.document(greeting=f"g{i}", port=port))
        wait_for(lambda: accepted_version(rig) == v, timeout=60, what=f"manifest {v}")  # noqa: B023
        rig.sim.fault = "down"  # ... down: its reports wait in the outbox
        handshakes = rig.sim.handshakes
        wait_for(lambda: rig.sim.handshakes > handshakes, timeout=60, what="a try while down")  # noqa: B023
    rig.sim.fault = None
    settle(rig, port, "1.0.0 g25", v)
    bodies = reports(rig)
    versions = [b["adoptedManifestVersion"] for b in bodies]
    assert versions == sorted(versions)
    for version in set(versions):
        seen = [b["status"]["state"] for b in bodies if b["adoptedManifestVersion"] == version]
        assert seen in (["pending", "installing", "installed"], ["installing", "installed"])
    assert len(rig.running(rig.deployment_id)) == 1


@pytest.mark.parametrize("point", ["before-apply", "after-apply"])
def test_sigkill_during_a_v1_apply_then_restart_converges(rig, point):
    port = free_port()
    v1 = rig.publish(rig.document(greeting="first", port=port))
    killed = rig.start(MARGO_LITE_TEST_KILL_AT=point)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    rig.start()
    settle(rig, port, "1.0.0 first", v1)
    assert len(rig.containers()) == 1
    seen = [s for s, _ in states(reports(rig))]
    assert seen[-1] == "installed" and seen.count("installed") == 1
    assert seen.index("installing") < seen.index("installed")
    assert rig.stop() == 0
