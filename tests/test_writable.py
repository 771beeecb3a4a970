"""Start-up and check-config refuse a state or runtime folder the service cannot write.

The real sandbox (`ProtectSystem=strict` under systemd) is in tests/test_packaging.py; here a
read-only bind mount in a private mount namespace stands for it, and systemd's own report of
a unit's sandbox is parsed as `systemctl show` prints it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from margo_lite import writable
from margo_lite.errors import DirNotWritableError

SHOW = """LoadState=loaded
ProtectSystem=strict
StateDirectory=margo-lite
RuntimeDirectory=margo-lite
ReadWritePaths=-/srv/extra /data/margo
PrivateTmp=yes
"""


def test_the_units_writable_folders_are_read_from_systemctl_show() -> None:
    sandbox = writable.parse_show(SHOW)
    assert sandbox is not None
    allowed = ("/var/lib/margo-lite/x", "/run/margo-lite", "/srv/extra/a", "/data/margo", "/tmp")
    assert [p for p in allowed if writable.denied_by(sandbox, Path(p))] == []
    denied = ("/srv/margo", "/var/lib/margo-lite2", "/run/podman", "/data")
    assert [p for p in denied if writable.denied_by(sandbox, Path(p))] == list(denied)


def test_no_strict_sandbox_or_no_unit_leaves_it_to_the_file_system() -> None:
    assert writable.parse_show(SHOW.replace("strict", "full")) is None
    assert writable.parse_show("LoadState=not-found\n") is None


def test_a_state_dir_outside_the_sandbox_names_the_drop_in() -> None:
    sandbox = writable.parse_show(SHOW)
    with pytest.raises(DirNotWritableError) as caught:
        writable.check({"device.state_dir": Path("/srv/margo")}, sandbox, source="/etc/c.yaml")
    assert str(caught.value) == (
        "/etc/c.yaml: device.state_dir: /srv/margo is not writable by margo-lite.service "
        "(outside the folders margo-lite.service may write); allow it with a drop-in "
        "(systemctl edit margo-lite): [Service] ReadWritePaths=/srv/margo "
        "[CONFIG_DIR_NOT_WRITABLE]"
    )


def test_inside_a_service_the_file_system_answers() -> None:
    assert writable.service_sandbox({"INVOCATION_ID": "abc"}) is None
    assert writable.service_sandbox({"NOTIFY_SOCKET": "/run/x"}) is None


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
@pytest.mark.parametrize("key", ["state_dir", "runtime_dir"])
def test_a_read_only_folder_is_refused_with_exit_2_and_one_line(tmp_path: Path, key: str) -> None:
    """A read-only bind mount in a private mount namespace: EROFS, as under the sandbox."""
    folders = {"state_dir": tmp_path / "state", "runtime_dir": tmp_path / "run"}
    for folder in folders.values():
        folder.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-1", **{k: str(v) for k, v in folders.items()}},
                "wos": {"url": "http://127.0.0.1:9"},
                "git": {"url": "file:///srv/none"},
            }
        )
    )
    ro = folders[key]
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    for command in ("check-config", "once"):
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             f'mount --make-rprivate / && mount --bind -o ro "{ro}" "{ro}" && exec "$@"',
             "sh", sys.executable, "-m", "margo_lite", "-c", str(config), command],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"margo-lite: {config}: device.{key}: {ro} is not writable by margo-lite.service "
            "(read-only file system); allow it with a drop-in (systemctl edit margo-lite): "
            f"[Service] ReadWritePaths={ro} [CONFIG_DIR_NOT_WRITABLE]"
        ]


def test_only_check_config_predicts_the_service_from_the_units_sandbox(tmp_path: Path) -> None:
    """An installed unit whose sandbox would refuse the folder: `check-config` says so (it
    predicts the service); `once` started by hand writes there itself, so its own file system
    answers, and it asks systemd nothing. (No systemd runs here as PID 1: a `systemctl` that
    prints what systemd would stands in for it; the real unit is in tests/test_packaging.py.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    show = SHOW.replace("PrivateTmp=yes\n", "")  # tmp_path is not among its folders
    (bin_dir / "systemctl").write_text(
        f"#!/bin/sh\necho \"$@\" >> {asked}\ncat <<'END'\n{show}END\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-1", "state_dir": str(state), "runtime_dir": str(tmp_path)},
                "wos": {"url": "http://127.0.0.1:9"},
                "git": {"url": "http://127.0.0.1:9/none.git", "timeout": "1s"},
            }
        )
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def margo(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "margo_lite", "-c", str(config), command],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    checked = margo("check-config")
    assert checked.returncode == 2
    assert "outside the folders margo-lite.service may write" in checked.stderr
    assert asked.read_text().startswith("show margo-lite.service")

    asked.unlink()
    once = margo("once")
    assert "CONFIG_DIR_NOT_WRITABLE" not in once.stderr + once.stdout
    assert state.is_dir()  # it went on: the state folder is made, the poll fails (no server)
    assert not asked.exists()
