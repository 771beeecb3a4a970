"""Runs inside the power-cut guest (tests/support/powercut.py): answers the host's checks
over a virtio serial port, one JSON line per request, one JSON line per answer.

    {"op": "check", "ports": [..]}  -> {"records": {name: value | {"error": ..}},
                                        "containers": [podman ps -a --format json entries],
                                        "pages": {port: text | None}}
    {"op": "halt"}                  -> SIGTERM the agent, sync, {"halted": true}, power off

The guest's Python with Debian's libraries, the agent's code on the data disk (PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from margo_lite.errors import MargoLiteError
from margo_lite.statestore import StateStore

STATE = Path("/data/state")
AGENT_PID = Path("/run/agent.pid")
FOLDERS = ("deployments", "outbox")
MANAGED = "io.margo.managed-by=margo-lite"


def records() -> dict:
    store = StateStore(STATE)
    found: dict = {}
    try:
        names = store.names() + [n for f in FOLDERS for n in store.names(f)]
    except MargoLiteError as exc:
        return {"(listing)": {"error": f"{exc.code}: {exc}"}}
    for name in names:
        try:
            found[name] = {"value": store.read_json(name)}
        except MargoLiteError as exc:
            found[name] = {"error": f"{exc.code}: {exc}"}
    return found


def containers() -> list:
    out = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label={MANAGED}", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout or "[]") if out.returncode == 0 else [{"error": out.stderr}]


def page(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
            return response.read().decode(errors="replace")
    except OSError:
        return None


def halt() -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(AGENT_PID.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the agent's own shutdown; bounded by the deadline
    os.sync()


def answer(request: dict) -> dict:
    if request.get("op") == "halt":
        halt()
        return {"halted": True}
    return {
        "records": records(),
        "containers": containers(),
        "pages": {str(p): page(p) for p in request.get("ports", [])},
    }


def port_device() -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == "ctl":
            return f"/dev/{entry.name}"
    raise SystemExit("powercut-guest: no virtio port named ctl")


def main() -> None:
    with open(port_device(), "r+b", buffering=0) as port:
        pending = b""
        while True:
            chunk = port.read(65536)
            if not chunk:
                time.sleep(0.05)  # the host is not connected (between boots of its side)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                port.write(json.dumps(answer(request)).encode() + b"\n")
                if request.get("op") == "halt":
                    subprocess.run(["busybox", "poweroff", "-f"], check=False)


if __name__ == "__main__":
    main()
