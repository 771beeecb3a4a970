"""Capabilities: discovery from a /proc and /sys tree, the real ones, the CLI, sending."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from margo_lite.capabilities import discover
from margo_lite.config import CapabilitiesConfig
from tests.conftest import base_config
from tests.support.wos import (
    CLIENT_ID,
    clean,
    secret_free_logs,  # noqa: F401 (autouse fixture)
    simulator,
    write_secret,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A /proc and /sys as a 4-core gateway with Ethernet, Wi-Fi, a bridge and a GPU shows them."""
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    write(
        proc / "cpuinfo",
        "".join(f"processor\t: {n}\ncpu MHz\t\t: 1200.000\n\n" for n in range(4)),
    )
    write(proc / "meminfo", "MemTotal:        3906250 kB\nMemFree:          100000 kB\n")
    for n in range(4):
        write(sysfs / f"devices/system/cpu/cpu{n}/cpufreq/cpuinfo_max_freq", f"{2400000 - n}\n")
    net = sysfs / "class/net"
    for name, kind in (("eth0", "1"), ("wlan0", "1"), ("br0", "1"), ("lo", "772")):
        write(net / name / "type", kind + "\n")
        write(net / name / "address", "02:00:00:00:00:01\n")
    for name in ("eth0", "wlan0"):
        (net / name / "device").mkdir()
    (net / "wlan0" / "wireless").mkdir()
    write(net / "eth0" / "speed", "1000\n")
    write(net / "wlan0" / "speed", "-1\n")
    drivers = sysfs / "bus/pci/drivers/igb"
    drivers.mkdir(parents=True)
    os.symlink(drivers, net / "eth0" / "device" / "driver")
    write(sysfs / "class/drm/card0/device/vendor", "0x10de\n")
    write(sysfs / "class/drm/card0/device/device", "0x1eb8\n")
    (sysfs / "class/drm/card0-HDMI-A-1").mkdir()
    write(sysfs / "class/dmi/id/sys_vendor", "Acme Gateways\n")
    write(sysfs / "class/dmi/id/product_name", "GW-9000\n")
    return proc, sysfs


def test_discovery_from_a_tree(tree, tmp_path):
    proc, sysfs = tree
    body = discover("gw-test", tmp_path / "state", CapabilitiesConfig(), proc=proc, sysfs=sysfs)
    assert body["apiVersion"] == "device.margo/v1" and body["kind"] == "DeviceCapabilities"
    props = body["properties"]
    assert props["id"] == "gw-test"
    assert (props["vendor"], props["modelNumber"], props["serialNumber"]) == (
        "Acme Gateways",
        "GW-9000",
        "",
    )
    assert props["roles"] == ["Standalone Device"]
    cpu = props["resources"]["cpus"][0]
    assert cpu["cores"] == 4 and cpu["frequency"] == 2.4 and cpu["cpuArchitecture"]
    assert props["resources"]["memory"] == 4.0  # 3906250 KiB = 4.0e9 bytes
    assert props["resources"]["storage"] > 0  # the filesystem of the (missing) state dir's parent
    assert props["interfaces"] == [
        {
            "name": "eth0",
            "type": "ethernet",
            "modelNumber": "igb",
            "properties": {"speedMbps": 1000, "macAddress": "02:00:00:00:00:01"},
        },
        {"name": "wlan0", "type": "wifi", "properties": {"macAddress": "02:00:00:00:00:01"}},
    ]
    assert props["peripherals"] == [
        {
            "name": "card0",
            "type": "gpu",
            "modelNumber": "0x1eb8",
            "properties": {"manufacturer": "NVIDIA"},
        }
    ]


def test_configuration_wins_and_adds_peripherals(tree, tmp_path):
    proc, sysfs = tree
    camera = {"name": "cam0", "type": "camera", "modelNumber": "C920", "properties": {}}
    cfg = CapabilitiesConfig(
        vendor="Northstar",
        modelNumber="332ANZE1-N1",
        serialNumber="PF45343-AA",
        roles=("Standalone Cluster", "Cluster Leader"),
        peripherals=(camera,),
    )
    props = discover("gw-test", tmp_path, cfg, proc=proc, sysfs=sysfs)["properties"]
    assert (props["vendor"], props["modelNumber"], props["serialNumber"]) == (
        "Northstar",
        "332ANZE1-N1",
        "PF45343-AA",
    )
    assert props["roles"] == ["Standalone Cluster", "Cluster Leader"]
    assert props["peripherals"][-1] == camera


def test_frequency_falls_back_to_cpuinfo_and_missing_values_are_left_out(tmp_path):
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    write(proc / "cpuinfo", "processor : 0\ncpu MHz : 1500.5\n")
    props = discover("gw", tmp_path, CapabilitiesConfig(), proc=proc, sysfs=sysfs)["properties"]
    assert props["resources"]["cpus"][0]["frequency"] == 1.5
    assert "memory" not in props["resources"]
    assert props["interfaces"] == [] and props["peripherals"] == []


def test_discovery_on_this_machine(tmp_path):
    body = discover("gw-test", tmp_path, CapabilitiesConfig())
    resources = body["properties"]["resources"]
    assert resources["cpus"][0]["cores"] >= 1
    assert resources["memory"] > 0 and resources["storage"] > 0
    json.dumps(body)  # plain JSON


def test_cli_prints_and_sends(tmp_path, cli, config_file):
    with simulator() as sim:
        data = base_config(tmp_path)
        data["wos"] = {
            "url": sim.url,
            "token_url": sim.token_url,
            "client_id": CLIENT_ID,
            "client_secret_file": str(write_secret(tmp_path)),
        }
        data["capabilities"] = {"vendor": "Acme", "serialNumber": "SN-1"}
        path = config_file(data)
        printed = clean(cli("-c", str(path), "capabilities"))
        assert printed.returncode == 0, printed.stderr
        body = json.loads(printed.stdout)
        assert body["properties"]["vendor"] == "Acme"
        assert sim.requests() == []
        sent = clean(cli("-c", str(path), "capabilities", "--send"))
        assert sent.returncode == 0, sent.stderr
        assert sim.capabilities["gw-test"]["properties"]["serialNumber"] == "SN-1"
        again = clean(cli("-c", str(path), "capabilities", "--send"))
        assert again.returncode == 0, again.stderr
        assert [r.method for r in sim.requests("/device/")] == ["POST", "PUT"]


def test_cli_send_failure_is_one_line(tmp_path, cli, config_file):
    with simulator(client_id=None) as sim:
        data = base_config(tmp_path)
        data["wos"] = {"url": sim.url}
        sim.fault = "500"
        result = clean(cli("-c", str(config_file(data)), "capabilities", "--send"))
    assert result.returncode == 1
    assert "WOS_SERVER_ERROR" in result.stderr and "Traceback" not in result.stderr
    assert yaml.safe_load(result.stdout)["kind"] == "DeviceCapabilities"
