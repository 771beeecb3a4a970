"""Real container engines for tests: a private podman store and a private dockerd.

Both are session-scoped and share one locally built busybox image (no registry):
- podman runs with a test-only containers.conf (runc, ulimits that work here; see
  sandbox-notes) and its own storage, network and run folders under a temporary folder,
  so tests neither see nor touch the machine's containers;
- dockerd is started on a unix socket under a temporary folder with its own data and exec
  roots, no default bridge and no iptables rules, and stopped (by its pid) at the end.

Use `engine_environ("podman" | "docker")` in a test to get the environment to hand to the
backend; it skips the test when that engine cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_for

IMAGE = "localhost/margo-test:1"
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "httpd", "cat", "wc", "true", "false", "env", "ls")


def base_environ() -> dict[str, str]:
    """A minimal environment; PATH includes this interpreter's bin (podman-compose lives there)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def build_busybox_tar(folder: Path) -> Path:
    """A root filesystem holding only a static busybox and its applet links."""
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("busybox is not installed (apt: busybox-static)")
    root = folder / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    (root / "tmp").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www" / "index.html").write_text("busybox\n")
    tar = folder / "busybox.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(root, arcname=".")
    return tar


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_tar(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def podman_environ(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> Iterator[dict[str, str]]:
    """podman with its own store, networks and run folders, and the test image imported."""
    if not shutil.which("podman") or not shutil.which("runc"):
        pytest.skip("podman or runc is not installed")
    if os.geteuid() != 0:
        pytest.skip("the podman tests run as root")
    top = tmp_path_factory.mktemp("podman")
    conf = top / "containers.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [containers]
            default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
            [engine]
            runtime = "runc"
            tmp_dir = "{top}/tmp"
            [network]
            network_config_dir = "{top}/networks"
            """
        )
    )
    storage = top / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{top}/root"\nrunroot = "{top}/run"\n'
    )
    env = {**base_environ(), "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
    run(["podman", "import", str(busybox_tar), IMAGE], env)
    yield env
    for argv in (
        ["podman", "rm", "-a", "-f", "-t", "0"],
        ["podman", "network", "prune", "-f"],
        ["podman", "volume", "prune", "-f"],
        ["podman", "rmi", "-a", "-f"],
    ):
        subprocess.run(argv, env=env, capture_output=True, timeout=120)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_environ(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> Iterator[dict[str, str]]:
    """A private dockerd for this session, with the test image imported; stopped at the end."""
    if not shutil.which("dockerd") or not shutil.which("docker"):
        pytest.skip("dockerd is not installed (apt: docker.io)")
    if os.geteuid() != 0:
        pytest.skip("the dockerd tests run as root")
    top = tmp_path_factory.mktemp("dockerd")
    sock = top / "docker.sock"
    log = open(top / "dockerd.log", "wb")  # noqa: SIM115 - closed after the daemon stops
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(top / "data"),
            "--exec-root",
            str(top / "exec"),
            "--pidfile",
            str(top / "dockerd.pid"),
            "--bridge",
            "none",
            "--iptables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {**base_environ(), "DOCKER_HOST": f"unix://{sock}"}
    try:

        def answers() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(top / 'dockerd.log').read_text()[-2000:]}")
            probe = subprocess.run(["docker", "version"], env=env, capture_output=True, timeout=30)
            return probe.returncode == 0

        wait_for(answers, timeout=60, interval=0.2, what="the private dockerd to answer")
        run(["docker", "import", str(busybox_tar), IMAGE], env)
        yield env
    finally:
        subprocess.run(["docker", "rm", "-f", *_ids(env)], env=env, capture_output=True)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=30)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


def _ids(env: dict[str, str]) -> list[str]:
    result = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True, text=True)
    return result.stdout.split()


@pytest.fixture(scope="session")
def engine_environ(request: pytest.FixtureRequest) -> Callable[[str], dict[str, str]]:
    """engine name -> its environment, starting that engine's fixture on first use."""

    def get(engine: str) -> dict[str, str]:
        return request.getfixturevalue(f"{engine}_environ")

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str = "/", timeout: float = 5) -> str | None:
    """The body at http://127.0.0.1:port/path, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
