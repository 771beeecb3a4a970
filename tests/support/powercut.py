"""A real power cut: the agent and podman run in a KVM guest, and the guest's power is cut
by SIGKILL of qemu at the torture's seeded instants; the same disks boot again.

What runs where: the guest (a debootstrapped Debian 12 with Debian's kernel, built once by
tools/build-guest into `.cache/guest`) runs the agent with Debian's Python libraries, podman
and the apps; its state_dir and podman's store are on a virtio data disk made for each run.
The Git server and the WOS simulator stay on the host, listening on 127.0.0.1 only: qemu's
user networking maps the guest's 10.0.2.2 to the host's loopback, and nothing else of the
host is reachable. The host reads the agent's log from the guest's serial console (it leaves
the guest as it is written, so it survives the cut) and asks the guest for its records,
containers and pages over a virtio serial port (tests/support/powercut_guest.py).

Why the cut loses what was not synced: the data disk uses `cache=none` (O_DIRECT on the
image file), so a write the guest submitted goes to the image with no qemu or host page
cache in between, and the guest is told the disk has a volatile write cache, so its
kernel sends flushes on fsync. Whatever the guest kernel still holds (dirty pages, ext4's
uncommitted journal) dies with the qemu process: that is exactly the state a machine loses
when its power goes. (`cache=unsafe` or `writeback` would only differ on a host crash; the
host here survives, which is why the guest's own page cache is what matters.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from margo_lite.errors import StateCorruptError
from tests.support.engines import IMAGE
from tests.support.gitserver import GitServer, Upstream
from tests.support.rig import ROOT
from tests.support.torture import Torture, _size

GUEST = ROOT / ".cache" / "guest"
HOST_FROM_GUEST = "10.0.2.2"  # qemu user networking: the host's 127.0.0.1
STARTED = "powercut: agent starting"
GUEST_EVERY = 20.0  # seconds: while the WOS lacks a status, the guest is asked this seldom
CMDLINE = (
    "root=/dev/vda ro rootfstype=ext4 console=ttyS0 init=/sbin/powercut-init "
    "quiet loglevel=1 panic=-1 tsc=reliable mitigations=off"
)

#: PID 1's second half, on the data disk: what podman needs, the network, podman's image,
#: the checker, then the agent. Its log goes to the serial console, read by the host.
INIT = f"""\
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PYTHONPATH=/data/code
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
for d in /tmp /var/tmp /var/log /dev/shm; do mount -t tmpfs tmpfs $d; done
mkdir -p /data/cni /data/cni-conf
mount --bind /data/containers /var/lib/containers
mount --bind /data/cni /var/lib/cni
mount --bind /data/cni-conf /etc/cni/net.d
modprobe -a virtio_net virtio_console
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via {HOST_FROM_GUEST}
podman image exists {IMAGE} || podman import -q /data/image.tar {IMAGE} >/dev/null
python3 /data/guest.py &
echo "{STARTED} (uptime $(cut -d' ' -f1 /proc/uptime) s)"
python3 -m margo_lite -c /data/config.yaml run 2>&1 &
echo $! >/run/agent.pid
wait $!
echo "powercut: the agent exited"
sleep 1000000
"""


def accelerator() -> tuple[str, str]:
    """qemu's accelerator and CPU: KVM where it runs Debian's kernel, else qemu's own (TCG).

    Where /dev/kvm is backed by `kvm_pvm` (nested virtualisation by page tables, as on this
    project's machines) it runs only kernels built as PVM guests; a stock kernel hangs in its
    decompressor. A power cut means the same either way: the machine's memory is gone.
    MARGO_LITE_POWERCUT_ACCEL=kvm|tcg overrides."""
    chosen = os.environ.get("MARGO_LITE_POWERCUT_ACCEL") or (
        "tcg" if Path("/sys/module/kvm_pvm").exists() else "kvm"
    )
    return ("kvm", "host") if chosen == "kvm" else ("tcg,thread=multi", "max")


def build_guest(folder: Path = GUEST) -> Path:
    """The guest's kernel, initrd and root disk, built when missing (a few minutes)."""
    subprocess.run([str(ROOT / "tools" / "build-guest"), str(folder)], check=True, timeout=1800)
    return folder


def make_data_disk(path: Path, staging: Path, config: dict, image_tar: Path) -> None:
    """The guest's data disk: the agent's code and configuration, the app image, the (empty)
    state_dir and podman store, as an ext4 image."""
    shutil.copytree(
        ROOT / "margo_lite",
        staging / "code" / "margo_lite",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "tests" / "support" / "powercut_guest.py", staging / "guest.py")
    shutil.copy(image_tar, staging / "image.tar")
    (staging / "init").write_text(INIT)
    (staging / "init").chmod(0o755)
    (staging / "config.yaml").write_text(yaml.safe_dump(config))
    for folder in ("state", "containers"):
        (staging / folder).mkdir(mode=0o700)
    subprocess.run(["truncate", "-s", "2G", str(path)], check=True)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "data",
            "-E",
            "root_owner=0:0",
            "-d",
            str(staging),
            str(path),
        ],
        check=True,
        timeout=120,
    )


def guest_config(server: GitServer, repo: str, wos_url: str) -> dict:
    return {
        "device": {"id": "gw-powercut", "state_dir": "/data/state", "runtime_dir": "/run/margo"},
        "wos": {"url": wos_url.replace("127.0.0.1", HOST_FROM_GUEST)},
        "git": {"url": server.url(repo, host=HOST_FROM_GUEST)},
        "poll": {"interval": "1s", "jitter": 0},
        "runtime": {
            "engine": "podman",
            "compose": "builtin",
            "observe_interval": "1s",
            "health_timeout": "120s",
        },
    }


class Guest:
    """One qemu/KVM machine over the guest image and a data disk; `boot()` powers it on."""

    def __init__(self, top: Path, image: Path, data: Path) -> None:
        self.top = top
        self.image = image
        self.data = data
        self.console = top / "console.log"
        self.socket_path = top / "ctl.sock"
        self.qemu: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.boots = 0
        self.accel, self.cpu = accelerator()
        self.boot_seconds: list[float] = []

    def argv(self) -> list[str]:
        return [
            *("qemu-system-x86_64", "-machine", "q35", "-accel", self.accel, "-cpu", self.cpu),
            *("-m", "1024", "-smp", "2", "-nodefaults", "-no-user-config"),
            *("-display", "none", "-no-reboot"),
            *("-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img")),
            *("-append", CMDLINE),
            *("-chardev", f"file,id=con,path={self.console},append=on", "-serial", "chardev:con"),
            *("-drive", f"file={self.image / 'root.img'},if=virtio,format=raw,readonly=on"),
            *("-drive", f"file={self.data},if=virtio,format=raw,cache=none,aio=native"),
            *("-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"),
            "-device",
            "virtio-serial-pci",
            *("-chardev", f"socket,id=ctl,path={self.socket_path},server=on,wait=off"),
            *("-device", "virtserialport,chardev=ctl,name=ctl"),
        ]

    def boot(self, timeout: float = 180) -> subprocess.Popen:
        """Power on and wait until the agent starts; the qemu process is the machine."""
        self.close()
        self.console.touch()
        since = _size(self.console)
        began = time.monotonic()
        with open(self.top / "qemu.log", "ab") as log:
            self.qemu = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        self.boots += 1
        deadline = began + timeout
        while not self._console_has(STARTED, since):
            if self.qemu.poll() is not None:
                raise AssertionError(
                    f"the guest stopped while booting ({self.qemu.returncode}): "
                    + (self.top / "qemu.log").read_text(errors="replace")[-2000:]
                    + self.console.read_text(errors="replace")[-3000:]
                )
            assert time.monotonic() < deadline, (
                "the guest did not boot in time: "
                + (self.console.read_text(errors="replace")[-3000:])
            )
            time.sleep(0.05)  # polls the serial console's file for the boot line
        self.boot_seconds.append(time.monotonic() - began)
        self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel.connect(str(self.socket_path))
        return self.qemu

    def _console_has(self, text: str, since: int) -> bool:
        with open(self.console, "rb") as f:
            f.seek(since)
            return text.encode() in f.read()

    def request(self, request: dict, timeout: float = 90) -> dict:
        """One question to the guest's checker and its answer."""
        assert self.channel is not None, "the guest is not running"
        self.channel.settimeout(timeout)
        self.channel.sendall(json.dumps(request).encode() + b"\n")
        received = b""
        while not received.endswith(b"\n"):
            chunk = self.channel.recv(65536)
            if not chunk:
                raise ConnectionError("the guest closed its control port")
            received += chunk
        return json.loads(received)

    def halt(self) -> None:
        """A clean shutdown: the agent stopped, the disks synced, the power off."""
        if self.qemu is None or self.qemu.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.request({"op": "halt"})
        try:
            self.qemu.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.cut()

    def cut(self) -> None:
        """The power cut: qemu SIGKILLed, the guest's memory gone with it."""
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait(timeout=60)
        self.close()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class GuestRig:
    """What `Torture` uses of a `Rig`, for an agent inside the guest."""

    def __init__(self, top: Path, upstream: Upstream, sim: Any, guest: Guest) -> None:
        self.tmp = top
        self.upstream = upstream
        self.sim = sim
        self.guest = guest
        self.log = guest.console
        self.agent: subprocess.Popen | None = None
        self.environ: dict[str, str] = {}

    def last(self, dep_id: str) -> dict | None:
        statuses = self.sim.statuses(dep_id)
        return statuses[-1] if statuses else None

    def cleanup(self) -> None:
        self.guest.cut()


class _Snapshot:
    """The guest's records as the checker saw them, read like a `StateStore`."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def names(self, folder: str = "") -> list[str]:
        if not folder:
            return [n for n in self.records if "/" not in n]
        return [n for n in self.records if n.startswith(folder + "/")]

    def read_json(self, name: str) -> Any:
        found = self.records[name]
        if "error" in found:
            raise StateCorruptError(found["error"])
        return found["value"]


class PowerCutTorture(Torture):
    """The torture with the agent in the guest: a kill is a power cut, a start a boot."""

    def __init__(self, rig: GuestRig, **options: Any) -> None:
        super().__init__(rig, **options)  # type: ignore[arg-type]
        self.guest = rig.guest
        self.snapshot = _Snapshot()
        self.store = self.snapshot  # type: ignore[assignment]
        self.seen: dict[str, Any] = {"containers": [], "pages": {}}
        self.asked = 0.0  # when the guest was last asked

    def start(self) -> None:
        self.agent = self.guest.boot()
        self.rig.agent = self.agent

    def stop(self) -> None:
        self.guest.halt()

    def check(self) -> list[str]:
        # The WOS is on the host: until it holds every last status, asking the guest (podman
        # there, under emulation) would only slow the agent it shares the CPUs with.
        waiting = self.check_wos()
        if waiting and time.monotonic() < self.asked + GUEST_EVERY:
            time.sleep(1)  # between polls of the WOS simulator's in-memory statuses
            return waiting
        self.asked = time.monotonic()
        try:
            seen = self.guest.request(
                {"op": "check", "ports": [d.port for d in self.churn.deployments]}
            )
        except (OSError, ValueError, AssertionError) as exc:
            return [f"the guest does not answer: {exc}"]
        self.snapshot.records = seen["records"]
        self.seen = seen
        return super().check()

    def containers(self) -> list[dict]:
        return self.seen["containers"]

    def page(self, port: int) -> str | None:
        return self.seen["pages"].get(str(port))

    def reap_conmons(self) -> int:
        return 0  # the guest's processes end with its power
