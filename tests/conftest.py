"""Shared fixtures: a configuration file in a temporary folder, and the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite.devkit import wossim
from tests.support import engines, hypo
from tests.support.gitserver import GitServer
from tests.support.rig import Rig
from tests.support.wos import secret_free_logs  # noqa: F401 (autouse: every test's log)

ROOT = Path(__file__).resolve().parent.parent

# The agent reads proxy variables as curl and git do; a developer's own must not route the
# tests' loopback servers through a proxy (the proxy tests set their own).
for _name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)

HYPOTHESIS_PROFILE = hypo.load()  # before the test modules build their settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "proves(*claims): fault-table claims this test proves (tests/support/faults.py)"
    )


def pytest_report_header() -> str:
    return f"hypothesis profile: {HYPOTHESIS_PROFILE} (tests/support/hypo.py)"


def base_config(tmp_path: Path) -> dict:
    """A minimal valid configuration whose state lives in `tmp_path`."""
    return {
        "device": {
            "id": "gw-test",
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
        },
        "wos": {"url": "http://127.0.0.1:9"},
        "git": {"url": str(tmp_path / "repo.git")},
    }


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a configuration (the minimal one, or the mapping or text given) and return its path."""

    def write(data: dict | str | None = None, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        if data is None:
            data = base_config(tmp_path)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return write


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess:
    """`margo-lite ARGS` in a child process, exactly as a user would run it."""
    full_env = {k: v for k, v in os.environ.items() if k != "MARGO_LITE_CONFIG"}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "margo_lite", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


# --- real container engines, shared by every test of the session ---------------------------


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engines.build_busybox_tar(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def podman_environ(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[dict]:
    with engines.podman(tmp_path_factory.mktemp("podman"), busybox_tar) as environ:
        yield environ


@pytest.fixture(scope="session")
def docker_environ(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[dict]:
    with engines.dockerd(tmp_path_factory.mktemp("dockerd"), busybox_tar) as environ:
        yield environ


@pytest.fixture(scope="session")
def engine_environ(request: pytest.FixtureRequest) -> Callable[[str], dict]:
    """engine name -> its environment; starts that engine on first use in the session."""
    return lambda engine: request.getfixturevalue(f"{engine}_environ")


# --- one device end to end: Git server, WOS simulator, podman ---------------------------------


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("git")) as server:
        yield server


@pytest.fixture
def rig(tmp_path: Path, git_server: GitServer, podman_environ: dict) -> Iterator[Rig]:
    """A device whose agent is started by the test; its containers are removed after."""
    with wossim.WosSimulator() as sim:
        r = Rig(tmp_path, git_server, podman_environ, sim)
        try:
            yield r
        finally:
            r.cleanup()
