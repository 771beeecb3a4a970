"""`margo-lite demo`: the agent's whole job, end to end, on this machine.

It starts a WOS simulator and a local Git repository holding an example deployment (a
small web app on a busybox image built here, no registry needed), runs the real agent
against a real engine (podman or docker), and narrates: Pending, Installing, Installed,
the app answering, a parameter update, a removal. Then it cleans up after itself.
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
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from margo_lite.devkit import wossim
from margo_lite.errors import MargoLiteError

IMAGE = "localhost/margo-lite-demo-web:1"
DEPLOYMENT_ID = "demo-web-0001"
DEVICE_ID = "demo-gateway"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "mkdir", "cat", "sleep", "httpd", "wget", "true")
STEP_TIMEOUT = 180.0


class DemoError(MargoLiteError):
    code = "DEMO_FAILED"


class DemoNeedsError(MargoLiteError):
    """Something the demo needs is not on this machine: one line and exit 2, not a failure."""

    code = "DEMO_NEEDS_UNMET"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- the container engine and the image ----------------------------------------------------


def find_engine(environ: dict[str, str]) -> str:
    """The first engine CLI that answers: podman, then docker."""
    for name in ("podman", "docker"):
        if shutil.which(name) is None:
            continue
        result = subprocess.run([name, "info"], capture_output=True, env=environ, timeout=60)
        if result.returncode == 0:
            return name
    raise DemoNeedsError(
        "no container engine answers: install podman (or docker.io and start dockerd)"
    )


def find_static_busybox() -> Path:
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:8192]:
            return path
    raise DemoNeedsError(
        "a static busybox is needed to build the demo image: apt-get install busybox-static"
    )


def busybox_rootfs_tar(busybox: Path, target: Path) -> Path:
    """A one-binary root filesystem as a tarball, ready for `podman/docker import`."""
    with tarfile.open(target, "w") as tar:
        for folder in ("bin", "tmp", "www"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return target


def build_image(
    engine: str, busybox: Path, tag: str, workdir: Path, environ: dict[str, str]
) -> None:
    tar = busybox_rootfs_tar(busybox, workdir / "rootfs.tar")
    result = subprocess.run(
        [engine, "import", str(tar), tag], capture_output=True, text=True, env=environ, timeout=120
    )
    if result.returncode != 0:
        raise DemoError(f"{engine} import failed: {result.stderr.strip()}")


# --- the desired-state repository ----------------------------------------------------------


class DemoRepo:
    """A local Git repository the demo commits to, as a WOS would."""

    def __init__(self, path: Path) -> None:
        from dulwich.repo import Repo

        self.path = path
        self.repo = Repo.init(str(path), mkdir=True)
        self.repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/main")

    def write(self, files: dict[str, str | None], message: str) -> str:
        from dulwich import porcelain

        added, removed = [], []
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
                removed.append(str(target))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            added.append(str(target))
        if added:
            porcelain.add(self.repo, paths=added)
        if removed:
            porcelain.remove(self.repo, paths=removed, cached=True)
        who = b"margo-lite demo <demo@localhost>"
        commit = porcelain.commit(self.repo, message=message.encode(), author=who, committer=who)
        return commit.decode()


def compose_file(port: int) -> str:
    command = (
        'mkdir -p /www && echo "Hello from site $$SITE_ID" > /www/index.html'
        " && exec httpd -f -p 8080 -h /www"
    )
    return yaml.safe_dump(
        {
            "services": {
                "web": {
                    "image": IMAGE,
                    "command": ["sh", "-c", command],
                    "environment": {"SITE_ID": "${SITE_ID:-unset}"},
                    "ports": [f"127.0.0.1:{port}:8080"],
                    # httpd runs as PID 1 and ignores SIGTERM: do not wait the default 10 s
                    "stop_grace_period": "1s",
                }
            }
        },
        sort_keys=False,
    )


def deployment(site_id: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "application.margo.org/v1alpha1",
            "kind": "ApplicationDeployment",
            "metadata": {
                "annotations": {"id": DEPLOYMENT_ID, "applicationId": "com-example-demo-web"},
                "name": "demo-web",
                "namespace": "margo-demo",
            },
            "spec": {
                "deploymentProfile": {
                    "type": "docker-compose",
                    "components": [
                        {"name": "web", "properties": {"packageLocation": "packages/web"}}
                    ],
                },
                "parameters": {
                    "siteId": {
                        "value": site_id,
                        "targets": [{"pointer": "ENV.SITE_ID", "components": ["web"]}],
                    }
                },
            },
        },
        sort_keys=False,
    )


# --- watching ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    what: str,
    check: Callable[[], bool],
    agent: subprocess.Popen,
    narrate: Callable[[], None],
    timeout: float = STEP_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        narrate()
        if check():
            narrate()
            return
        if agent.poll() is not None:
            raise DemoError(
                f"the agent exited with code {agent.returncode} while waiting for {what}"
            )
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def new_reports(statuses: list[dict], seen: list[str]) -> Iterator[tuple[dict, str]]:
    """The status reports past the `seen` ones (their states go into `seen`), each with
    ` (CODE: message)` when it carries an error, for the narration."""
    for body in statuses[len(seen) :]:
        seen.append(body["status"]["state"])
        error = body["status"].get("error") or {}
        yield body, f" ({error['code']}: {error['message']})" if error.get("code") else ""


def http_get(port: int) -> str | None:
    """The demo app's page; never through a proxy from the environment (it is local)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.read().decode().strip()
    except OSError:
        return None


@contextlib.contextmanager
def running_agent(
    config_path: Path, log_path: Path, environ: dict[str, str]
) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log_file:
        agent = subprocess.Popen(
            [sys.executable, "-m", "margo_lite", "-c", str(config_path), "run"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environ,
        )
        try:
            yield agent
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()


def _remove_leftovers(engine: str, environ: dict[str, str]) -> None:
    """After a failed demo: its containers (the agent may not have removed them), its image.
    By the demo device's label: another device's containers on this engine are not its own."""
    label = f"io.margo.device={DEVICE_ID}"
    try:
        ids = subprocess.run(
            [engine, "ps", "-aq", "--filter", f"label={label}"],
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
        ).stdout.split()
        if ids:
            subprocess.run(
                [engine, "rm", "-f", *ids], capture_output=True, env=environ, timeout=120
            )
        subprocess.run([engine, "rmi", "-f", IMAGE], capture_output=True, env=environ, timeout=120)
    except (subprocess.TimeoutExpired, OSError) as exc:
        say(f"Could not clean up the engine: {exc}")


def run(keep: bool = False) -> int:
    environ = dict(os.environ)
    try:
        busybox = find_static_busybox()
        engine = find_engine(environ)
    except DemoNeedsError as exc:
        print(f"margo-lite demo: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="margo-lite-demo-"))
    try:
        say(f"Using the container engine '{engine}'.")
        say(f"Building the demo image {IMAGE} from this machine's busybox (no registry needed).")
        build_image(engine, busybox, IMAGE, workdir, environ)
        port = free_port()
        with wossim.WosSimulator() as sim:
            say(f"Started a WOS simulator at {sim.url}.")
            repo = DemoRepo(workdir / "desired-state")
            repo.write(
                {
                    "packages/web/compose.yaml": compose_file(port),
                    "demo-web.yaml": deployment("SID-123-ABC"),
                },
                "Install demo-web",
            )
            say(
                f"Created a Git repository at {repo.path} holding an ApplicationDeployment "
                f"'{DEPLOYMENT_ID}' (web app, SITE_ID=SID-123-ABC, port {port})."
            )
            config_path = workdir / "config.yaml"
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "device": {
                            "id": DEVICE_ID,
                            "state_dir": str(workdir / "state"),
                            "runtime_dir": str(workdir / "run"),
                        },
                        "wos": {"url": sim.url},
                        "git": {"url": str(repo.path), "branch": "main"},
                        "poll": {"interval": "2s", "jitter": 0},
                        "runtime": {"engine": engine, "observe_interval": "5s"},
                    },
                    sort_keys=False,
                )
            )
            seen: list[str] = []

            def narrate() -> None:
                for body, detail in new_reports(sim.statuses(DEPLOYMENT_ID), seen):
                    say(f"  WOS received: {DEPLOYMENT_ID} is {body['status']['state']}{detail}")

            def last_state() -> str | None:
                return seen[-1] if seen else None

            say("Starting the agent (margo-lite run) against that repository and the simulator.")
            with running_agent(config_path, workdir / "agent.log", environ) as agent:
                wait_until("Installed", lambda: last_state() == "Installed", agent, narrate)
                wait_until(
                    "the app to answer",
                    lambda: http_get(port) is not None,
                    agent,
                    narrate,
                    timeout=60,
                )
                say(f"The app answers on 127.0.0.1:{port}: {http_get(port)!r}")

                say("The WOS changes a parameter: SITE_ID becomes SID-456-DEF.")
                before = len(seen)
                repo.write({"demo-web.yaml": deployment("SID-456-DEF")}, "Change siteId")
                agent.send_signal(signal.SIGUSR1)
                wait_until(
                    "the update",
                    lambda: (
                        len(seen) > before
                        and last_state() == "Installed"
                        and "SID-456-DEF" in (http_get(port) or "")
                    ),
                    agent,
                    narrate,
                )
                say(f"The app now answers: {http_get(port)!r}")

                say("The WOS removes the deployment from the repository.")
                repo.write({"demo-web.yaml": None}, "Remove demo-web")
                agent.send_signal(signal.SIGUSR1)
                wait_until("Removed", lambda: last_state() == "Removed", agent, narrate)
                wait_until(
                    "the app to stop", lambda: http_get(port) is None, agent, narrate, timeout=60
                )
                say("The app is gone and the WOS knows it.")
            say("Stopped the agent.")
        say(f"Demo finished: the WOS saw {' -> '.join(dict.fromkeys(seen))}.")
        return 0
    except (DemoError, subprocess.TimeoutExpired, OSError) as exc:
        say(f"Demo failed: {exc}")
        log_path = workdir / "agent.log"
        if log_path.exists():
            print("--- last lines of the agent's log ---", file=sys.stderr)
            print(
                "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr
            )
        return 1
    finally:
        _remove_leftovers(engine, environ)
        if keep:
            say(f"Kept the demo files in {workdir}.")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("Cleaned up.")
