"""The fault suite: what the running agent does when the Git server, the WOS or the engine
fails. Each test drives `margo-lite once` or `margo-lite run` on real parts (C git's
http-backend, the WOS simulator, podman or a private dockerd) and checks what a user
would: the app still answers, its container was not touched, what the WOS heard.

The table "What margo-lite does when things fail" in docs/proof.md is rendered from
tests/support/faults.py, which links each of its claims to the tests here that carry
`@proves(claim)` (checked by tests/test_fault_table.py).
Most tests share one device (module scope) with one installed app, and leave it as found.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite import gitsource
from margo_lite.devkit import wossim
from margo_lite.errors import MargoLiteError
from margo_lite.records import POLL_RECORD
from margo_lite.statestore import StateStore
from tests.conftest import run_cli
from tests.support import engines
from tests.support.engines import IMAGE, Dockerd, free_port, http_get, run
from tests.support.faults import proves
from tests.support.gitserver import Fault, GitServer, make_test_ca, refused_url
from tests.support.pkgserver import PackageServer
from tests.support.rig import APP, Rig, app_files, deployment, wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

CLIENT_ID = "gw-faults"
CLIENT_SECRET = "s3cret-client-secret-for-faults"


@pytest.fixture(scope="module")
def wos() -> Iterator[wossim.WosSimulator]:
    with wossim.WosSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as sim:
        sim.slow_seconds = 3.0  # past the device's wos.timeout of 1s
        yield sim


def _device_overrides(folder: Path, sim: wossim.WosSimulator) -> dict[str, dict]:
    secret = folder / "client-secret"
    secret.write_text(CLIENT_SECRET)
    secret.chmod(0o600)
    return {
        "wos": {
            "token_url": sim.token_url,
            "client_id": CLIENT_ID,
            "client_secret_file": str(secret),
            "timeout": "1s",
        },
        "git": {"timeout": "2s"},
        "poll": {"max_backoff": "2s"},
    }


@pytest.fixture(scope="module")
def device(tmp_path_factory, git_server: GitServer, podman_environ, wos) -> Iterator[Rig]:
    """One device with web-1 installed by `margo-lite once`; `device.port` is its port."""
    tmp = tmp_path_factory.mktemp("faults")
    rig = Rig(tmp, git_server, podman_environ, wos, _device_overrides(tmp, wos))
    rig.port = free_port()  # type: ignore[attr-defined]
    rig.upstream.commit(app_files(rig.port, "first"))  # type: ignore[attr-defined]
    try:
        result = rig.once()
        assert result.returncode == 0, result.stdout + result.stderr
        yield rig
    finally:
        rig.cleanup()


@pytest.fixture(autouse=True)
def _clear_faults(request, git_server: GitServer, wos) -> Iterator[None]:
    """Each test leaves the servers healthy and the device's configuration as it found it."""
    device = request.getfixturevalue("device") if "device" in request.fixturenames else None
    saved = device.config.read_text() if device else None
    yield
    git_server.fault, git_server.fault_skip = None, 0
    git_server.release_stalled()
    wos.fault = None
    if device is not None:
        if device.agent is not None and device.agent.poll() is None:
            device.stop()
        device.config.write_text(saved)


def _snapshot(rig: Rig) -> tuple:
    """What must not change when a fault only delays things: containers and WOS reports."""
    containers = sorted((c["Id"], c["State"], c.get("StartedAt")) for c in rig.containers())
    return containers, len(rig.sim.statuses())


def _greeting(rig: Rig) -> str:
    return (http_get(rig.port) or "").strip()  # type: ignore[attr-defined]


def _outbox(rig: Rig) -> int:
    folder = rig.tmp / "state" / "outbox"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def _change(rig: Rig, greeting: str) -> str:
    return rig.upstream.commit(
        {"web-1.yaml": deployment("web-1", greeting=greeting, port=rig.port)}  # type: ignore[attr-defined]
    )


# --- Git server -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.UNAUTHORIZED, "GIT_AUTH_FAILED"),
        (Fault.FORBIDDEN, "GIT_AUTH_FAILED"),
        (Fault.NOT_FOUND, "GIT_NOT_FOUND"),
        (Fault.SERVER_ERROR, "GIT_SERVER_ERROR"),
        (Fault.STALL, "GIT_TIMEOUT"),
    ],
    ids=["401", "403", "404", "500", "stall"],
)
@proves(
    "git-untouched",
    "git-once-exits-1",
    "git-auth",
    "git-not-found",
    "git-server-error",
    "git-stall",
)
def test_git_http_fault_keeps_the_last_desired_state(device, git_server, fault, code):
    before, greeting = _snapshot(device), _greeting(device)
    _change(device, f"after-{fault.name}")
    git_server.fault = fault
    result = device.once()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[{code}]" in result.stdout
    assert "Traceback" not in result.stderr
    assert _snapshot(device) == before  # nothing removed, restarted or reported
    assert _greeting(device) == greeting
    git_server.fault = None
    git_server.release_stalled()
    assert device.once().returncode == 0  # the server is back: the change is applied
    assert _greeting(device) == f"after-{fault.name}"


@proves("git-refused")
def test_git_connection_refused_keeps_the_last_desired_state(device):
    before, greeting = _snapshot(device), _greeting(device)
    device.configure({"git": {"url": refused_url()}})
    result = device.once()
    assert result.returncode == 1
    assert "[GIT_UNREACHABLE]" in result.stdout and "Connection refused" in result.stdout
    assert _snapshot(device) == before
    assert _greeting(device) == greeting


@pytest.mark.parametrize("fault", [Fault.TRUNCATE, Fault.CORRUPT], ids=["truncated", "corrupt"])
@proves("git-pack")
def test_broken_pack_is_not_applied_then_fetched_again(device, git_server, fault):
    before, greeting = _snapshot(device), _greeting(device)
    new = _change(device, f"after-{fault.value}")
    # A new process: ls-refs passes (after the capability advertisement, unless the server's
    # capabilities are kept in state_dir from an earlier run), the fetch breaks.
    cached = (device.tmp / "state" / "git" / gitsource.PROTOCOL_FILE).exists()
    git_server.fault, git_server.fault_skip = fault, 1 if cached else 2
    result = device.once()
    assert result.returncode == 1
    assert "[GIT_PACK_INVALID]" in result.stdout
    assert _snapshot(device) == before and _greeting(device) == greeting
    git_server.fault = None
    assert device.once().returncode == 0
    assert _greeting(device) == f"after-{fault.value}"
    assert new == device.upstream.tip()


@pytest.fixture(scope="module")
def tls_git(tmp_path_factory, git_server: GitServer) -> Iterator[tuple[GitServer, Path, Path]]:
    """The same repositories over HTTPS; a certificate for another name, from a known CA;
    and a CA the device does not know."""
    good = make_test_ca(tmp_path_factory.mktemp("ca"), hostname="git.example")
    other = make_test_ca(tmp_path_factory.mktemp("other-ca"))
    with GitServer(git_server.root, tls=good) as server:
        yield server, good.ca_cert, other.ca_cert


@pytest.mark.parametrize("mismatch", ["host name", "unknown CA"])
@proves("git-tls")
def test_tls_certificate_mismatch_is_refused(device, tls_git, mismatch):
    server, ca, other_ca = tls_git
    name = device.upstream.path.name
    before, greeting = _snapshot(device), _greeting(device)
    if mismatch == "host name":  # the certificate is for git.example and 127.0.0.1 only
        device.configure({"git": {"url": server.url(name, host="localhost"), "ca_file": str(ca)}})
    else:
        device.configure({"git": {"url": server.url(name), "ca_file": str(other_ca)}})
    result = device.once()
    assert result.returncode == 1
    assert "[GIT_TLS_FAILED]" in result.stdout
    assert _snapshot(device) == before and _greeting(device) == greeting
    device.configure({"git": {"url": server.url(name), "ca_file": str(ca)}})
    assert device.once().returncode == 0  # the right certificate: the same state, unchanged
    assert _snapshot(device) == before


@proves("git-force-push")
def test_force_push_is_followed(device):
    old = _change(device, "before-force-push")
    assert device.once().returncode == 0
    _change(device, "to-be-rewritten")
    assert device.once().returncode == 0
    assert _greeting(device) == "to-be-rewritten"
    device.upstream.set_branch(old)  # history rewritten on the server
    result = device.once()
    assert result.returncode == 0, result.stdout
    assert _greeting(device) == "before-force-push"
    assert len(device.running("web-1")) == 1
    assert device.last("web-1")["status"]["state"] == "Installed"


@proves("git-branch-missing")
def test_deleted_branch_keeps_the_last_desired_state(device):
    tip = device.upstream.tip()
    before, greeting = _snapshot(device), _greeting(device)
    device.upstream.delete_branch()
    try:
        result = device.once()
        assert result.returncode == 1
        assert "[GIT_BRANCH_MISSING]" in result.stdout
        assert _snapshot(device) == before and _greeting(device) == greeting
    finally:
        device.upstream.set_branch(tip)
    assert device.once().returncode == 0
    assert _snapshot(device) == before


@proves("git-status-shows-error", "git-auth", "git-stall")
def test_running_agent_rides_out_every_git_fault(device, git_server):
    """The daemon: faults one after another, it keeps polling, the app keeps answering,
    and the first commit after the faults is applied."""
    greeting = _greeting(device)
    agent = device.start()
    wait_for(lambda: "unchanged" in _poll_result(device), what="a first clean poll")
    for fault, code in [
        (Fault.UNAUTHORIZED, "GIT_AUTH_FAILED"),
        (Fault.FORBIDDEN, "GIT_AUTH_FAILED"),
        (Fault.NOT_FOUND, "GIT_NOT_FOUND"),
        (Fault.SERVER_ERROR, "GIT_SERVER_ERROR"),
        (Fault.STALL, "GIT_TIMEOUT"),
        (Fault.DROP, "GIT_UNREACHABLE"),
    ]:
        git_server.fault = fault
        wait_for(lambda c=code: f"[{c}]" in _poll_result(device), timeout=30, what=code)
        shown = run_cli("-c", str(device.config), "status")  # what the operator sees
        assert shown.returncode == 0 and f"[{code}]" in shown.stdout, shown.stdout + shown.stderr
        git_server.fault = None
        git_server.release_stalled()
        assert agent.poll() is None, device.log_text()[-2000:]
        assert _greeting(device) == greeting
        # a clean poll between faults, so that each fault's own error is seen
        wait_for(lambda: _poll_result(device) == "unchanged", timeout=30, what="a clean poll")
    _change(device, "after-the-storm")
    wait_for(lambda: _greeting(device) == "after-the-storm", timeout=60, what="the change")
    wait_state(device, "web-1", "Installed")
    assert device.stop() == 0
    assert "Traceback" not in device.log_text()


def _poll_result(rig: Rig) -> str:
    """The running agent's last poll result, as `margo-lite status` shows it."""
    try:
        record = StateStore(rig.tmp / "run").read_json(POLL_RECORD) or {}
    except MargoLiteError:  # read while being replaced: look again
        return ""
    return record.get("last_poll_result", "")


# --- WOS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["down", "500", "slow"])
@proves("wos-outbox", "wos-slow")
def test_wos_fault_reports_wait_in_the_outbox_and_are_delivered_after(device, wos, fault):
    seen = len(wos.statuses("web-1"))
    wos.fault = fault
    _change(device, f"wos-{fault}")
    result = device.once()
    assert result.returncode == 0, result.stdout + result.stderr  # the app is applied anyway
    assert _greeting(device) == f"wos-{fault}"
    assert _outbox(device) >= 2  # Installing, Installed wait on disk
    if fault != "slow":  # a slow WOS may still accept what the device gave up waiting for
        assert len(wos.statuses("web-1")) == seen
    wos.fault = None
    assert device.once().returncode == 0
    assert _outbox(device) == 0
    states = [s["status"]["state"] for s in wos.statuses("web-1")[seen:]]
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == [
        "Installing",
        "Installed",
    ]


@proves("wos-401")
def test_wos_401_costs_one_token_refresh(device, wos):
    """The running agent holds a token; the WOS forgets it; the next report gets a 401, one
    new token, and goes through."""
    device.start()
    _change(device, "token-in-use")  # a report: the running agent now holds a token
    wait_for(lambda: _greeting(device) == "token-in-use", timeout=60, what="the change")
    wait_for(lambda: _outbox(device) == 0, what="its reports delivered")
    wait_state(device, "web-1", "Installed")
    tokens = wos.token_requests()
    wos.revoke_tokens()
    seen, reports = len(wos.requests()), len(wos.statuses("web-1"))
    _change(device, "after-401")
    wait_for(
        lambda: (
            [s["status"]["state"] for s in wos.statuses("web-1")[reports:]]
            == ["Installing", "Installed"]
        ),
        timeout=60,
        what="Installing and Installed at the WOS",
    )
    assert _greeting(device) == "after-401"
    answers = [(r.path, r.answer) for r in wos.requests()[seen:]]
    assert answers[0][1] == 401 and answers[1] == (wossim.TOKEN_PATH, 200), answers
    assert wos.token_requests() == tokens + 1
    assert [a for _, a in answers[2:]] == [201, 201]  # Installing, Installed
    wait_for(lambda: _outbox(device) == 0, what="the outbox emptied")
    assert device.stop() == 0
    log = device.log_text()
    assert CLIENT_SECRET not in log and "simtok-" not in log


@proves("capabilities-follow")
def test_wos_down_at_start_capabilities_follow_when_it_is_back(
    tmp_path, tmp_path_factory, git_server, busybox_tar
):
    """A gateway often starts before its network: the capabilities it could not send at
    start are sent once the WOS answers, without a restart. (A device with a podman store
    of its own: its agent would remove the shared device's containers as leftovers.)"""
    with (
        engines.podman(tmp_path_factory.mktemp("pod"), busybox_tar) as environ,
        wossim.WosSimulator() as sim,
    ):
        rig = Rig(tmp_path, git_server, environ, sim)
        rig.upstream.commit({"README.md": "no deployments yet\n"})
        sim.fault = "down"
        agent = rig.start()
        try:
            wait_for(lambda: "capabilities not sent" in rig.log_text(), what="the first try")
            sim.fault = None
            wait_for(lambda: "gw-e2e" in sim.capabilities, timeout=90, what="the capabilities")
            assert agent.poll() is None, rig.log_text()[-3000:]
            assert rig.stop() == 0
        finally:
            rig.cleanup()


# --- engine -----------------------------------------------------------------------------------


def _second_app(rig: Rig, dep_id: str, port: int, image: str = IMAGE) -> None:
    rig.upstream.commit(
        {
            f"apps/{dep_id}/compose.yaml": APP.format(image=image),
            f"{dep_id}.yaml": deployment(
                dep_id, greeting=dep_id, port=port, package=f"apps/{dep_id}"
            ),
        }
    )


def _drop(rig: Rig, dep_id: str) -> None:
    rig.upstream.commit({f"{dep_id}.yaml": None, f"apps/{dep_id}/compose.yaml": None})


def _left_of(rig: Rig, dep_id: str) -> dict[str, list[str]]:
    """Whatever the engine still holds of a deployment: containers in any state (created,
    exited, running), networks and volumes, found by its ownership label."""
    label = f"label=io.margo.deployment={dep_id}"
    found = {}
    for kind, argv in [
        ("containers", ["ps", "-a", "--filter", label, "--format", "{{.Names}} {{.State}}"]),
        ("networks", ["network", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ("volumes", ["volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
    ]:
        found[kind] = run(["podman", *argv], rig.environ).split()
    return found


@proves("image-missing")
def test_missing_image_fails_that_deployment_alone(device):
    before, greeting = _snapshot(device), _greeting(device)
    _second_app(device, "no-image", free_port(), image="localhost/margo-test-missing:1")
    result = device.once()
    assert result.returncode == 1
    assert "failed: no-image" in result.stdout
    status = device.last("no-image")["status"]
    assert status["state"] == "Failed" and status["error"]["code"] == "IMAGE_MISSING"
    assert "localhost/margo-test-missing:1" in status["error"]["message"]
    assert _snapshot(device)[0] == before[0] and _greeting(device) == greeting
    _drop(device, "no-image")
    assert device.once().returncode == 0
    assert device.last("no-image")["status"]["state"] == "Removed"


@proves("port-taken")
def test_port_taken_fails_that_deployment_alone_until_the_next_start(device):
    """The running agent: Failed with PORT_IN_USE, web-1 untouched, the agent goes on. The
    error is not transient, so it is tried again at the next change or the next start."""
    before, greeting = _snapshot(device), _greeting(device)
    port = free_port()
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        _second_app(device, "busy-port", port)
        agent = device.start()
        status = wait_state(device, "busy-port", "Failed", timeout=90)["status"]
        assert status["error"]["code"] == "PORT_IN_USE"
        assert f"127.0.0.1:{port}" in status["error"]["message"]
        assert agent.poll() is None
        assert _snapshot(device)[0] == before[0] and _greeting(device) == greeting
        assert _left_of(device, "busy-port") == {"containers": [], "networks": [], "volumes": []}
    finally:
        holder.close()
    assert device.stop() == 0
    device.start()
    wait_state(device, "busy-port", "Installed", timeout=90)
    assert (http_get(port) or "").strip() == "busy-port"
    _drop(device, "busy-port")
    wait_state(device, "busy-port", "Removed")
    assert device.stop() == 0
    assert _snapshot(device)[0] == before[0] and _greeting(device) == greeting


@proves("engine-restart")
def test_engine_daemon_stopped_and_started_again(
    tmp_path, tmp_path_factory, git_server, busybox_tar
):
    """A private dockerd stops under the running agent (its containers stop with it) and
    starts again: the agent keeps running, removes nothing, and restores the app."""
    daemon = Dockerd(tmp_path_factory.mktemp("dkd"))  # short: containerd's socket path
    with wossim.WosSimulator() as sim:
        rig = Rig(tmp_path, git_server, daemon.environ, sim)
        rig.configure({"runtime": {"engine": "docker", "compose": "builtin"}})
        rig.port = port = free_port()  # type: ignore[attr-defined]
        try:
            daemon.start()
            run(["docker", "import", str(busybox_tar), IMAGE], daemon.environ)
            rig.upstream.commit(app_files(port, "on-docker"))
            agent = rig.start()
            wait_state(rig, "web-1", "Installed")
            assert _greeting(rig) == "on-docker"
            (record,) = rig.running("web-1")

            daemon.stop()
            wait_for(
                lambda: "cannot observe web-1/web" in rig.log_text(),
                timeout=30,
                what="the agent noticing that the engine is gone",
            )
            assert agent.poll() is None
            assert http_get(port) is None
            assert rig.states("web-1") == ["Pending", "Installing", "Installed"]  # no alarm

            daemon.start()
            wait_for(lambda: _greeting(rig) == "on-docker", timeout=90, what="the app restored")
            wait_for(lambda: "web-1/web restored" in rig.log_text(), what="the log line")
            (again,) = rig.running("web-1")
            assert again["Labels"] == record["Labels"]
            assert rig.states("web-1") == ["Pending", "Installing", "Installed"]

            # A change that comes while the engine is away waits for it (ENGINE_UNAVAILABLE is
            # transient: retried with backoff), then is applied.
            daemon.stop()
            rig.upstream.commit({"web-1.yaml": deployment("web-1", greeting="later", port=port)})
            status = wait_state(rig, "web-1", "Failed")["status"]
            assert status["error"]["code"] == "ENGINE_UNAVAILABLE"
            assert agent.poll() is None
            daemon.start()
            wait_for(lambda: _greeting(rig) == "later", timeout=90, what="the change applied")
            wait_state(rig, "web-1", "Installed")
            assert len(rig.running("web-1")) == 1
            assert rig.stop() == 0
            assert "Traceback" not in rig.log_text()
        finally:
            if rig.agent is not None and rig.agent.poll() is None:
                rig.agent.kill()
                rig.agent.wait(timeout=30)
            if daemon.running:
                rig.cleanup()
            daemon.close()


# --- hostile desired state and package servers ----------------------------------------------


@proves("surprise-alone")
def test_surprise_in_one_deployment_fails_it_alone_and_run_goes_on(device):
    """An exception no code was written for (the test hook raises it at apply) fails that
    deployment alone with INTERNAL_ERROR; web-1 is untouched and `run` stays up."""
    before, greeting = _snapshot(device), _greeting(device)
    _second_app(device, "surprise", free_port())
    agent = device.start(MARGO_LITE_TEST_RAISE_AT="apply:surprise")
    status = wait_state(device, "surprise", "Failed", timeout=90)["status"]
    assert status["error"]["code"] == "INTERNAL_ERROR"
    assert "RuntimeError" in status["error"]["message"]
    assert agent.poll() is None
    assert _snapshot(device)[0] == before[0] and _greeting(device) == greeting
    _drop(device, "surprise")
    wait_state(device, "surprise", "Removed")
    assert device.stop() == 0
    assert "Traceback" not in device.log_text()


@proves("git-object-type")
def test_git_object_of_the_wrong_type_keeps_the_last_desired_state(device):
    """The branch names a tag object (crafted on the server: `git update-ref` refuses it)."""
    tip = device.upstream.tip()
    before, greeting = _snapshot(device), _greeting(device)
    device.upstream.git("tag", "-f", "-a", "-m", "not a commit", "faults-tag", tip)
    tag = device.upstream.git("rev-parse", "refs/tags/faults-tag")
    (device.upstream.path / "refs" / "heads" / device.upstream.branch).write_text(f"{tag}\n")
    try:
        result = device.once()
        assert result.returncode == 1
        assert "[GIT_OBJECT_INVALID]" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        assert _snapshot(device) == before and _greeting(device) == greeting
    finally:
        device.upstream.set_branch(tip)
    assert device.once().returncode == 0
    assert _snapshot(device) == before


@proves("package-deadline")
def test_trickling_package_server_is_cut_at_the_deadline(device):
    """A package server sends one byte every half second (each read in time, the transfer
    endless): cut at `packages.deadline` with PACKAGE_DOWNLOAD_FAILED; the deployment
    beside it is Installed and `run` stays up."""
    before, greeting = _snapshot(device), _greeting(device)
    device.configure({"packages": {"deadline": "3s", "timeout": "10s"}})
    with PackageServer(None) as server:
        url = server.put("/slow.tar.gz", bytes(1 << 20))
        server.trickle["/slow.tar.gz"] = 0.5
        beside_port = free_port()
        device.upstream.commit(
            {
                "a-slow.yaml": deployment("a-slow", greeting="slow", port=free_port(), package=url),
                "apps/beside/compose.yaml": APP.format(image=IMAGE),
                "beside.yaml": deployment(
                    "beside", greeting="beside", port=beside_port, package="apps/beside"
                ),
            }
        )
        agent = device.start()
        status = wait_state(device, "a-slow", "Failed", timeout=90)["status"]
        assert status["error"]["code"] == "PACKAGE_DOWNLOAD_FAILED"
        assert "packages.deadline" in status["error"]["message"]
        wait_state(device, "beside", "Installed", timeout=90)
        assert (http_get(beside_port) or "").strip() == "beside"
        assert agent.poll() is None
        assert server.body_bytes["/slow.tar.gz"] < 1 << 20
    device.upstream.commit(
        {"a-slow.yaml": None, "beside.yaml": None, "apps/beside/compose.yaml": None}
    )
    wait_state(device, "beside", "Removed")
    assert device.stop() == 0
    assert _snapshot(device)[0] == before[0]
    wait_for(lambda: _greeting(device) == greeting, timeout=30, what="web-1 still answering")
