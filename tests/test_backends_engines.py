"""The acceptance scenarios on real engines: podman and a private dockerd, every compose driver
available here, locally built busybox images, no registry.

One scenario per (engine, driver) walks an application through its life, because each step
builds on the last one and containers are slow to create on two cores.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from margo_lite.backends import Backend, ComponentUnit, builtin, select
from margo_lite.backends import project as proj
from margo_lite.config import RuntimeConfig
from margo_lite.errors import EngineError
from tests.support.engines import IMAGE, free_port, http_get
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

DEVICE = "gw-engines"
COMBOS = [
    ("podman", "builtin"),
    ("podman", "podman-compose"),
    ("docker", "builtin"),
    ("docker", "docker-compose"),
]

APP = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo \\"$$GREETING\\" > /data/index.html;
      echo start >> /data/starts.txt; httpd -f -p 8080 -h /data & wait"]
    environment:
      GREETING: "${{GREETING:-hello}}"
    ports: ["127.0.0.1:{port}:8080"]
    volumes: ["data:/data"]
    depends_on: [worker]
    restart: unless-stopped
    stop_grace_period: 5s
    healthcheck:
      test: ["CMD", "sh", "-c", "test -s /data/index.html"]
      interval: 1s
      retries: 3
  worker:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8081 -h /www & wait"]
volumes:
  data: {{}}
"""


def _remove_quietly(backend: Backend, dep: str) -> None:
    """Leave the shared engine store clean for the tests after this one."""
    with contextlib.suppress(EngineError):
        backend.remove(dep, "app")


def write_app(folder: Path, port: int | str, image: str = IMAGE, text: str = APP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compose.yaml").write_text(text.format(image=image, port=port))
    return folder


def make_backend(engine: str, driver: str, environ: dict, state_dir: Path) -> Backend:
    cfg = RuntimeConfig(engine=engine, compose=driver, health_timeout=20.0)
    try:
        return select(cfg, state_dir, environ, device=DEVICE)
    except EngineError as exc:
        if driver != "builtin" and exc.code == "ENGINE_UNAVAILABLE":
            pytest.skip(f"{driver} is not available in this environment")
        raise


def unit(package: Path, deployment: str, digest: str, **env: str) -> ComponentUnit:
    return ComponentUnit.from_package(deployment, "app", package, env, {}, digest, device=DEVICE)


def web_container(backend: Backend, deployment: str, service: str = "web"):
    (container,) = backend._containers(deployment, "app")[service]
    return container


@pytest.mark.parametrize(("engine", "driver"), COMBOS, ids=[f"{e}-{d}" for e, d in COMBOS])
def test_application_life(
    engine: str, driver: str, engine_environ, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    environ = engine_environ(engine)
    backend = make_backend(engine, driver, environ, tmp_path / "state")
    dep = f"dep-{engine}-{driver}-ä/Ω {'x' * 80}"  # any length or characters
    request.addfinalizer(lambda: _remove_quietly(backend, dep))  # even when a step fails
    port = free_port()

    # install a two-service app whose HTTP port answers
    v1 = write_app(tmp_path / "v1", "${WEB_PORT}")
    backend.apply(unit(v1, dep, "d1", WEB_PORT=str(port)))
    assert wait_for(lambda: http_get(port) == "hello\n", what="the web service")
    health = backend.health(dep, "app")
    assert health.ok, health.problems()
    assert set(health.services) == {"web", "worker"}
    assert (dep, "app") in backend.managed()
    worker_id = web_container(backend, dep, "worker").id

    # applying the same digest again touches nothing
    web_id = web_container(backend, dep).id
    backend.apply(unit(v1, dep, "d1", WEB_PORT=str(port)))
    assert web_container(backend, dep).id == web_id

    # change an environment parameter: seen in the running container; only web recreated
    backend.apply(unit(v1, dep, "d2", WEB_PORT=str(port), GREETING="bonjour"))
    assert wait_for(lambda: http_get(port) == "bonjour\n", what="the new greeting")
    assert web_container(backend, dep, "worker").id == worker_id
    # the named volume kept what the first version wrote
    assert http_get(port, "/starts.txt") == "start\nstart\n"

    # change the compose file: another port
    port2 = free_port()
    v2 = write_app(tmp_path / "v2", port2)
    backend.apply(unit(v2, dep, "d3", GREETING="bonjour"))
    assert wait_for(lambda: http_get(port2) == "bonjour\n", what="the new port")
    assert http_get(port) is None
    assert http_get(port2, "/starts.txt") == "start\nstart\nstart\n"

    # an update that cannot start is rolled back; the old version still answers
    broken = write_app(
        tmp_path / "broken", port2, text=APP.replace("httpd -f -p 8080 -h /data & wait", "exit 3")
    )
    with pytest.raises(EngineError) as failed:
        backend.apply(unit(broken, dep, "d4", GREETING="broken"))
    assert failed.value.code == "ROLLED_BACK", failed.value
    assert "exit" in failed.value.message
    assert wait_for(lambda: http_get(port2) == "bonjour\n", what="the restored version")
    assert backend.health(dep, "app").ok
    # the restored version counts as applied: applying it again touches nothing
    web_id = web_container(backend, dep).id
    backend.apply(unit(v2, dep, "d3", GREETING="bonjour"))
    assert web_container(backend, dep).id == web_id

    # a port already taken is a coded failure, and leaves nothing behind
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        other = "taken-" + dep
        with pytest.raises(EngineError) as failed:
            backend.apply(unit(write_app(tmp_path / "taken", taken), other, "t1"))
        assert failed.value.code == "PORT_IN_USE", failed.value
        assert (other, "app") not in backend.managed()

    # removal leaves no labelled container or network; the named volume stays
    backend.remove(dep, "app")
    owned = proj.ownership_labels(dep, "app", device=DEVICE)
    assert backend.engine.containers(owned) == []
    assert backend.engine.networks(owned) == []
    assert [v["Name"] for v in backend.engine.volumes(owned)]
    assert (dep, "app") not in backend.managed()
    assert backend.health(dep, "app").services == {}
    purge = Backend(
        backend.engine, backend.driver, tmp_path / "state", device=DEVICE, purge_volumes=True
    )
    purge.remove(dep, "app")
    purge.remove(other, "app")
    assert backend.engine.volumes(owned) == []
    assert backend.engine.volumes(proj.ownership_labels(other, "app", device=DEVICE)) == []


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_missing_image_and_unsupported_key(engine: str, engine_environ, tmp_path: Path) -> None:
    backend = make_backend(engine, "builtin", engine_environ(engine), tmp_path / "state")
    absent = "localhost/margo-absent:1"
    package = write_app(tmp_path / "absent", free_port(), image=absent)
    with pytest.raises(EngineError) as failed:
        backend.apply(unit(package, "dep-absent", "a1"))
    assert failed.value.code == "IMAGE_MISSING"
    assert absent in failed.value.message

    package = tmp_path / "unsupported"
    package.mkdir()
    (package / "compose.yaml").write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: {IMAGE}
                privileged: true
            """
        )
    )
    with pytest.raises(EngineError) as failed:
        backend.apply(unit(package, "dep-unsupported", "u1"))
    assert failed.value.code == "COMPOSE_UNSUPPORTED_KEY"
    assert "services.web.privileged" in failed.value.message
    assert not {d for d, _ in backend.managed()} & {"dep-absent", "dep-unsupported"}


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_an_install_takes_only_its_own_network_and_waits_out_the_settle_window(
    engine: str, engine_environ, tmp_path: Path
) -> None:
    """An install creates its network straight away: one of its own left by a crash is
    used, one with its name but not its labels never is; a service that dies within the
    settle window fails the install and leaves nothing behind."""
    backend = make_backend(engine, "builtin", engine_environ(engine), tmp_path / "state")
    package = write_app(tmp_path / "simple", free_port(), text=SIMPLE)

    ours = "dep-net-ours"
    owned = proj.ownership_labels(ours, "app", device=DEVICE)
    network = f"{proj.project_name(ours, 'app', device=DEVICE)}_default"
    backend.engine.create_network(network, owned)  # left by a crash before the start
    backend.apply(unit(package, ours, "o1"))
    assert backend.health(ours, "app").ok
    assert [n["Name"] for n in backend.engine.networks(owned)] == [network]
    backend.remove(ours, "app")

    foreign = "dep-net-foreign"
    network = f"{proj.project_name(foreign, 'app', device=DEVICE)}_default"
    backend.engine.create_network(network, {"owner": "someone-else"})
    try:
        with pytest.raises(EngineError) as failed:
            backend.apply(unit(package, foreign, "f1"))
        assert network in failed.value.message
        assert backend.engine.networks({"owner": "someone-else"}) == [
            {"Name": network, "Labels": {"owner": "someone-else"}}
        ]
        assert (foreign, "app") not in backend.managed()
    finally:
        backend.engine.remove_network(network)

    dies = tmp_path / "dies"
    dies.mkdir()
    (dies / "compose.yaml").write_text(
        f'services:\n  web:\n    image: {IMAGE}\n    command: ["sh", "-c", "sleep 0.4; exit 3"]\n'
    )
    with pytest.raises(EngineError) as failed:
        backend.apply(unit(dies, "dep-dies", "x1"))
    assert failed.value.code == "HEALTHCHECK_FAILED", failed.value
    assert "exited with code 3" in failed.value.message
    assert ("dep-dies", "app") not in backend.managed()


FAKE_CONMON = """\
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[-1])))
s.listen()
print("bound", flush=True)
time.sleep(120)
"""

SIMPLE = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    ports: ["127.0.0.1:{port}:8080"]
"""


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_crash_leftovers_are_finished(engine: str, engine_environ, tmp_path: Path) -> None:
    """A component cut short (record says applying, containers left in Created, a foreign
    container with one of our names) is finished by the next apply, or fails coded."""
    backend = make_backend(engine, "builtin", engine_environ(engine), tmp_path / "state")
    port = free_port()
    package = write_app(tmp_path / "simple", port, text=SIMPLE)
    dep = "crash-" + engine
    backend.apply(unit(package, dep, "c1"))
    record = backend._record(proj.project_name(dep, "app", device=DEVICE))
    backend._write_record(
        proj.project_name(dep, "app", device=DEVICE),
        unit(package, dep, "c1"),
        "applying",
        record["doc"],
        None,
    )
    # what a crash between `create` and `start` leaves: our container, never started
    web = web_container(backend, dep)
    backend.engine.remove_container(web.id)
    labels = [f"--label={k}={v}" for k, v in web.labels.items()]
    backend.engine.run(["create", *labels, "--name", web.name, IMAGE, "true"])
    assert web_container(backend, dep).status in ("created", "configured")
    backend.apply(unit(package, dep, "c1"))
    assert wait_for(lambda: http_get(port) == "busybox\n", what="the finished component")
    assert backend.health(dep, "app").ok

    # an update whose health check fails is rolled back too
    sick = (
        SIMPLE
        + "    healthcheck:\n      test: [CMD, 'false']\n      interval: 1s\n      retries: 1\n"
    )
    with pytest.raises(EngineError) as failed:
        backend.apply(unit(write_app(tmp_path / "sick", port, text=sick), dep, "c2"))
    assert failed.value.code == "ROLLED_BACK"
    assert "health check failed" in failed.value.message
    assert http_get(port) == "busybox\n"

    # a container without our labels is never touched: its name taken is a coded failure
    other = "foreign-" + engine
    name = builtin.container_name(proj.project_name(other, "app", device=DEVICE), "web")
    backend.engine.run(["create", "--name", name, IMAGE, "true"])
    try:
        with pytest.raises(EngineError) as failed:
            backend.apply(unit(write_app(tmp_path / "f", free_port(), text=SIMPLE), other, "f1"))
        assert failed.value.code == "NAME_CONFLICT", failed.value
        assert backend.engine.container(name) is not None
    finally:
        backend.engine.remove_container(name)
    backend.remove(dep, "app")


def test_orphaned_conmon_holding_our_port_is_ended(engine_environ, tmp_path: Path) -> None:
    """The podman 4.3 hazard from sandbox-notes: a conmon outliving its container holds the
    published port. One is faked here (a process named conmon holding the port), because
    causing the real one needs a SIGKILL at an exact instant of `podman run`. Orphans of
    another device's project, or of another podman store, are left alone."""
    backend = make_backend("podman", "builtin", engine_environ("podman"), tmp_path / "state")
    dep = "conmon-orphan"
    name = builtin.container_name(proj.project_name(dep, "app", device=DEVICE), "web")
    store = backend.engine.run(["info", "--format", "{{.Store.GraphRoot}}"]).stdout.strip()
    port = free_port()
    script = tmp_path / "fake_conmon.py"
    script.write_text(FAKE_CONMON)

    def fake_conmon(name: str, store: str, port: int) -> subprocess.Popen:
        cid = "0" * 64
        bundle = f"{store}/overlay-containers/{cid}/userdata"
        conmon = subprocess.Popen(
            ["conmon", str(script), "-c", cid, "-n", name, "-b", bundle, str(port)],
            executable=sys.executable,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert conmon.stdout.readline() == "bound\n"
        return conmon

    fakes = []
    try:
        fakes.append(ours := fake_conmon(name, store, port))
        other_device = builtin.container_name(proj.project_name(dep, "app", device="gw-x"), "web")
        fakes.append(theirs := fake_conmon(other_device, store, free_port()))
        fakes.append(elsewhere := fake_conmon(name, str(tmp_path / "other-store"), free_port()))
        backend.apply(unit(write_app(tmp_path / "app", port, text=SIMPLE), dep, "o1"))
        assert ours.wait(timeout=30) == -signal.SIGKILL
        assert wait_for(lambda: http_get(port) == "busybox\n", what="the web service")
        assert theirs.poll() is None and elsewhere.poll() is None
    finally:
        for fake in fakes:
            if fake.poll() is None:
                fake.kill()
                fake.wait()
        backend.remove(dep, "app")


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_select_auto_detects_and_logs(
    engine: str, engine_environ, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = dict(engine_environ(engine))
    if engine == "docker":  # hide podman so that auto must find docker
        environ["PATH"] = str(tmp_path / "bin")
        (tmp_path / "bin").mkdir()
        for tool in ("docker", "docker-compose"):
            (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    with caplog.at_level(logging.INFO, logger="margo_lite"):
        backend = select(RuntimeConfig(), tmp_path / "state", environ, device=DEVICE)
    assert backend.engine.name == engine
    expected = {"podman": ("podman-compose", "builtin"), "docker": ("docker-compose",)}[engine]
    assert backend.driver.name in expected
    assert f"container engine: {engine} (detected), compose driver: {backend.driver.name}" in (
        caplog.text
    )
