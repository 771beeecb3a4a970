"""Real container engines for tests: a private podman store and a private dockerd.

Both are context managers (wrap them in session-scoped fixtures) and import one locally
built busybox image (no registry):
- podman runs with a test-only containers.conf (runc, ulimits that work here; see
  sandbox-notes) and its own storage, network and run folders under a temporary folder,
  so tests neither see nor touch the machine's containers;
- dockerd is started on a unix socket under a temporary folder with its own data and exec
  roots, no default bridge and no iptables rules, and stopped (by its pid) at the end.

Each yields the environment to hand to the backend (and its compose tools); each skips the
test when its engine cannot run here.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import firewall
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


@contextlib.contextmanager
def podman(top: Path, image_tar: Path) -> Iterator[dict[str, str]]:
    """podman with its own store, networks and run folders under `top`, the image imported.

    Yields the environment to run podman (and podman-compose) with.
    """
    if not shutil.which("podman") or not shutil.which("runc"):
        pytest.skip("podman or runc is not installed")
    if os.geteuid() != 0:
        pytest.skip("the podman tests run as root")
    conf = top / "containers.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [containers]
            default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
            [engine]
            runtime = "runc"
            tmp_dir = "{top}/tmp"
            events_logger = "file"
            events_logfile_path = "{top / firewall.EVENTS_LOG}"
            events_logfile_max_size = "0"
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
    try:
        run(["podman", "import", str(image_tar), IMAGE], env)
        yield env
    finally:
        for argv in (
            ["podman", "rm", "-a", "-f", "-t", "0"],
            ["podman", "network", "prune", "-f"],
            ["podman", "volume", "prune", "-f"],
            ["podman", "rmi", "-a", "-f"],
        ):
            subprocess.run(argv, env=env, capture_output=True, timeout=120)
        firewall.drop_leftovers(env)  # the host's firewall outlives the store
        shutil.rmtree(top, ignore_errors=True)


class Dockerd:
    """A private dockerd on a socket under `top` (own data and exec roots, no default bridge,
    no iptables rules) that a test can stop and start again on the same data."""

    def __init__(self, top: Path) -> None:
        if not shutil.which("dockerd") or not shutil.which("docker"):
            pytest.skip("dockerd is not installed (apt: docker.io)")
        if os.geteuid() != 0:
            pytest.skip("the dockerd tests run as root")
        top.mkdir(parents=True, exist_ok=True)
        self.top = top
        self.log_path = top / "dockerd.log"
        self.environ = {**base_environ(), "DOCKER_HOST": f"unix://{top / 'docker.sock'}"}
        self._daemon: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        top = self.top
        with open(self.log_path, "ab") as log:
            self._daemon = daemon = subprocess.Popen(
                [
                    "dockerd",
                    "--host",
                    f"unix://{top / 'docker.sock'}",
                    "--data-root",
                    str(top / "data"),
                    "--exec-root",
                    str(top / "exec"),
                    "--pidfile",
                    str(top / "dockerd.pid"),
                    "--bridge",
                    "none",  # no docker0: other daemons on this machine may have one
                    "--iptables=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log_path.read_text()[-2000:]}")
            probe = subprocess.run(
                ["docker", "version"], env=self.environ, capture_output=True, timeout=30
            )
            return probe.returncode == 0

        wait_for(answers, timeout=60, interval=0.2, what="the private dockerd to answer")

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    def stop(self) -> None:
        """Stop the daemon (by its pid), as a service manager does; its data stays."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)
        # A dockerd that died (containerd failed to start, say) leaves its data-root mounted.
        with open("/proc/mounts") as mounts:
            points = [line.split()[1] for line in mounts]
        for point in reversed(points):
            if point.startswith(f"{self.top}/"):
                subprocess.run(["umount", point], capture_output=True, timeout=30)

    def close(self) -> None:
        """Remove every container and network the daemon made, stop it and remove its
        folder. A network's bridge outlives a stopped dockerd in the host's namespace and
        holds one of docker's 31 default address pools until it is deleted: left behind,
        they starve every later dockerd on the machine."""
        if self.running:
            env = self.environ
            ids = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True, text=True)
            if ids.stdout.split():
                subprocess.run(
                    ["docker", "rm", "-f", *ids.stdout.split()], env=env, capture_output=True
                )
            subprocess.run(
                ["docker", "network", "prune", "-f"], env=env, capture_output=True, timeout=60
            )
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


@contextlib.contextmanager
def dockerd(top: Path, image_tar: Path) -> Iterator[dict[str, str]]:
    """A private `Dockerd` under `top`, the image imported; closed on exit (its containers
    and networks removed). Yields the environment for docker clients."""
    daemon = Dockerd(top)
    try:
        daemon.start()
        run(["docker", "import", str(image_tar), IMAGE], daemon.environ)
        yield daemon.environ
    finally:
        daemon.close()


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
