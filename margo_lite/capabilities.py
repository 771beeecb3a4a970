"""Device capabilities (contract §5): discovered from /proc and /sys, merged with configuration.

Discovery reads files only (no commands), each read allowed to fail: a value the kernel does
not expose is left out rather than guessed. What the device cannot know about itself
(vendor, model, serial number, roles, extra peripherals) comes from the `capabilities`
configuration section, which wins over anything discovered.

Decision (the drafts differ): the body follows the contract's shape, `resources.cpus[]`
with `cpuArchitecture`, `cores` and `frequency` (GHz), `memory` and `storage` in GB
(10^9 bytes, two decimals), `peripherals[]` and `interfaces[]` with name, type,
modelNumber and properties.
"""

from __future__ import annotations

import os
from pathlib import Path

from margo_lite.config import CapabilitiesConfig, Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

API_VERSION = "device.margo/v1"
KIND = "DeviceCapabilities"
GB = 1e9
_ARCH = {"aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "amd64": "x86_64"}
_PCI_GPU_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel", "0x13b5": "ARM"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except (OSError, ValueError):  # missing, EINVAL on a down link's speed, not permitted
        return None


def cpu(proc: Path, sysfs: Path) -> dict[str, Any]:
    """Architecture, core count and the highest frequency seen, in GHz."""
    info = _read(proc / "cpuinfo") or ""
    cores = sum(1 for line in info.splitlines() if line.split(":")[0].strip() == "processor")
    found: dict[str, Any] = {
        "cpuArchitecture": _ARCH.get(os.uname().machine, os.uname().machine),
        "cores": cores or os.cpu_count() or 1,
    }
    khz = [
        int(text)
        for path in sorted(
            (sysfs / "devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")
        )
        if (text := _read(path)) and text.isdigit()
    ]
    if khz:
        found["frequency"] = round(max(khz) / 1e6, 2)
    else:
        mhz = []
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                try:
                    mhz.append(float(value))
                except ValueError:
                    continue
        if mhz:
            found["frequency"] = round(max(mhz) / 1e3, 2)
    return found


def memory_bytes(proc: Path) -> int | None:
    for line in (_read(proc / "meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key == "MemTotal" and parts and parts[0].isdigit():
            return int(parts[0]) * 1024
    return None


def memory_gb(proc: Path) -> float | None:
    found = memory_bytes(proc)
    return None if found is None else round(found / GB, 2)


def storage_bytes(state_dir: Path) -> int | None:
    """Size of the filesystem that holds `state_dir` (or its nearest existing parent)."""
    path = state_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def storage_gb(state_dir: Path) -> float | None:
    found = storage_bytes(state_dir)
    return None if found is None else round(found / GB, 2)


def interfaces(sysfs: Path) -> list[dict[str, Any]]:
    """Physical network interfaces (not loopback, bridges, veths or tunnels)."""
    found = []
    net = sysfs / "class/net"
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return []
    for name in names:
        base = net / name
        if not (base / "device").exists():  # virtual: lo, bridges, veth, tun, containers'
            continue
        if (base / "wireless").exists() or (base / "phy80211").exists():
            kind = "wifi"
        else:
            # ARPHRD_*: 519 raw IP (cellular modems), 280 CAN; everything else as Ethernet
            kind = {"519": "cellular", "280": "canbus"}.get(_read(base / "type") or "", "ethernet")
        properties: dict[str, Any] = {}
        speed = _read(base / "speed")
        if speed and speed.lstrip("-").isdigit() and int(speed) > 0:
            properties["speedMbps"] = int(speed)
        mac = _read(base / "address")
        if mac:
            properties["macAddress"] = mac
        driver = base / "device/driver"
        model = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
        entry: dict[str, Any] = {"name": name, "type": kind, "properties": properties}
        if model:
            entry["modelNumber"] = model
        found.append(entry)
    return found


def gpus(sysfs: Path) -> list[dict[str, Any]]:
    """GPUs the DRM subsystem shows (card0, card1, ...; not their connectors)."""
    found = []
    for card in sorted((sysfs / "class/drm").glob("card[0-9]*")):
        if "-" in card.name:
            continue
        vendor = _read(card / "device/vendor")
        device = _read(card / "device/device")
        entry: dict[str, Any] = {"name": card.name, "type": "gpu", "properties": {}}
        if vendor:
            entry["properties"]["manufacturer"] = _PCI_GPU_VENDORS.get(vendor, vendor)
        if device:
            entry["modelNumber"] = device
        found.append(entry)
    return found


def _identity(sysfs: Path) -> dict[str, str]:
    """Vendor, model and serial from DMI (PCs) or the device tree (ARM boards), if readable."""
    dmi = sysfs / "class/dmi/id"
    found = {
        "vendor": _read(dmi / "sys_vendor"),
        "modelNumber": _read(dmi / "product_name"),
        "serialNumber": _read(dmi / "product_serial"),
    }
    tree = sysfs / "firmware/devicetree/base"
    found["modelNumber"] = found["modelNumber"] or _read(tree / "model")
    found["serialNumber"] = found["serialNumber"] or _read(tree / "serial-number")
    return {k: v.strip("\x00") for k, v in found.items() if v and v.strip("\x00")}


def _configured_identity(sysfs: Path, cfg: CapabilitiesConfig) -> dict[str, str]:
    identity = _identity(sysfs)
    for key in ("vendor", "modelNumber", "serialNumber"):
        value = getattr(cfg, key)
        if value is not None:
            identity[key] = value
    return identity


def discover_for(cfg: Config) -> dict[str, Any]:
    """The capabilities body of the configured profile (`wos.api`): draft or Margo 1.0."""
    args = (cfg.device.id, cfg.state_dir, cfg.capabilities)
    return discover_v1(*args) if getattr(cfg.wos, "api", "draft") == "v1" else discover(*args)


def discover_v1(
    device_id: str,
    state_dir: Path,
    cfg: CapabilitiesConfig,
    *,
    proc: Path = Path("/proc"),
    sysfs: Path = Path("/sys"),
) -> dict[str, Any]:
    """The Margo 1.0 `DeviceCapabilitiesManifest` (rendered by `wfmbody`); labels from
    `capabilities.labels`."""
    from margo_lite import wfmbody

    return wfmbody.capabilities_v1(
        device_id,
        _configured_identity(sysfs, cfg),
        cpu(proc, sysfs),
        memory_bytes(proc),
        storage_bytes(state_dir),
        gpus(sysfs) + [dict(p) for p in cfg.peripherals],
        interfaces(sysfs),
        cfg.labels or None,
    )


def discover(
    device_id: str,
    state_dir: Path,
    cfg: CapabilitiesConfig,
    *,
    proc: Path = Path("/proc"),
    sysfs: Path = Path("/sys"),
) -> dict[str, Any]:
    """The DeviceCapabilities body. `proc` and `sysfs` are parameters so tests can use a tree."""
    identity = _configured_identity(sysfs, cfg)
    resources: dict[str, Any] = {"cpus": [cpu(proc, sysfs)]}
    memory = memory_gb(proc)
    if memory is not None:
        resources["memory"] = memory
    storage = storage_gb(state_dir)
    if storage is not None:
        resources["storage"] = storage
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "properties": {
            "id": device_id,
            "vendor": identity.get("vendor", ""),
            "modelNumber": identity.get("modelNumber", ""),
            "serialNumber": identity.get("serialNumber", ""),
            "roles": list(cfg.roles),
            "resources": resources,
            "peripherals": gpus(sysfs) + [dict(p) for p in cfg.peripherals],
            "interfaces": interfaces(sysfs),
        },
    }
