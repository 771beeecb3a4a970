"""Refuse, before any work, a state or runtime folder the service cannot write.

The unit's sandbox (`ProtectSystem=strict`) leaves only its `StateDirectory=`,
`RuntimeDirectory=` and `ReadWritePaths=` writable. A `device.state_dir` elsewhere would pass a
syntax check and then fail at the first write, restarting forever; a read-only
`device.runtime_dir` would silently lose the poll lines `margo-lite status` shows. Both are
configuration errors (exit 2, which the unit does not restart) whose message names the drop-in
that would allow the folder.

Inside the service the file system itself answers (a read-only bind mount says EROFS), and so
it does for `run` and `once` started by hand: that process, not the unit, writes there.
`check-config`, run by an operator to predict the service, asks systemd for the unit's
sandbox, since the operator's own shell may write anywhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from margo_lite.errors import DirNotWritableError
from margo_lite.valueclass import dataclass

SERVICE = "margo-lite.service"
_PROPERTIES = ("LoadState", "ProtectSystem", "StateDirectory", "RuntimeDirectory",
               "ReadWritePaths", "PrivateTmp")  # fmt: skip


@dataclass(frozen=True)
class Sandbox:
    """What the unit lets the service write, as systemd reports it."""

    writable: tuple[str, ...]


def parse_show(text: str) -> Sandbox | None:
    """`systemctl show -p ...` output -> the unit's writable folders, or None when the unit
    is not installed or does not make the system read-only (then the file system decides)."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded" or props.get("ProtectSystem") != "strict":
        return None
    writable = [f"/var/lib/{name}" for name in props.get("StateDirectory", "").split()]
    writable += [f"/run/{name}" for name in props.get("RuntimeDirectory", "").split()]
    writable += [path.lstrip("-+") for path in props.get("ReadWritePaths", "").split()]
    if props.get("PrivateTmp") == "yes":
        writable += ["/tmp", "/var/tmp"]
    return Sandbox(tuple(writable))


def denied_by(sandbox: Sandbox, path: Path) -> bool:
    """True when `path` lies outside every folder the sandbox leaves writable."""
    return not any(path == Path(w) or Path(w) in path.parents for w in sandbox.writable)


def file_system_refuses(path: Path) -> str | None:
    """Why this process cannot create files in `path` (or create `path`), or None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    return "read-only file system" if read_only else "permission denied"


def service_sandbox(
    environ: Mapping[str, str] = os.environ,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Sandbox | None:
    """The installed unit's sandbox, when asked from outside it; None inside a service
    (systemd sets INVOCATION_ID, a service manager NOTIFY_SOCKET) or with no systemd to ask.

    (systemctl reports its own failure to a NOTIFY_SOCKET it inherits: never give it ours.)
    """
    if environ.get("INVOCATION_ID") or environ.get("NOTIFY_SOCKET"):
        return None
    try:
        shown = run(
            ["systemctl", "show", SERVICE, *(f"--property={p}" for p in _PROPERTIES)],
            capture_output=True,
            text=True,
            timeout=10,
            env={k: v for k, v in environ.items() if k != "NOTIFY_SOCKET"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_show(shown.stdout) if shown.returncode == 0 else None


def check(folders: Mapping[str, Path], sandbox: Sandbox | None, source: str = "") -> None:
    """Raise DirNotWritableError for the first folder (config key -> path) the service
    cannot write."""
    for key, path in folders.items():
        path = Path(os.path.abspath(path))
        if sandbox is not None and denied_by(sandbox, path):
            why = f"outside the folders {SERVICE} may write"
        else:
            why = file_system_refuses(path)
        if why:
            raise DirNotWritableError(
                f"{path} is not writable by {SERVICE} ({why}); allow it with a drop-in "
                f"(systemctl edit margo-lite): [Service] ReadWritePaths={path}",
                source=source,
                key=key,
            )
