"""`desired.source: wos` as the agent builds it: the v1 mTLS pools (the WFM's SPIFFE
identity checked before any request), shared by the desired-state source and the report
client, against the WFM simulator on 127.0.0.1 with a test trust domain."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite import config, cycle, desired, proxy
from margo_lite.devkit.svidca import SvidCA, wfm_id
from margo_lite.devkit.wfmsim import WfmSimulator
from margo_lite.errors import SourceError, TransientError
from margo_lite.wfmsource import WfmSource
from tests.conftest import base_config

DEVICE = "gw-source"
PREFIX = "/v1alpha2/margo"
DEPLOYMENT = "6d1f2c3a-0b4e-4c5d-8e6f-7a8b9c0d1e2f"


def document(device: str = DEVICE) -> str:
    return yaml.safe_dump(
        {
            "id": DEPLOYMENT,
            "metadata": {"name": "web", "namespace": "demo", "deviceId": device},
            "spec": {
                "applicationId": "com-example-web",
                "deploymentProfile": {
                    "type": "compose",
                    "components": [
                        {
                            "name": "web",
                            "properties": {
                                "repository": "oci://127.0.0.1:5000/demo/web",
                                "revision": "1.2.0",
                            },
                        }
                    ],
                },
                "parameters": {
                    "site": {"value": "S1", "targets": [{"pointer": "SITE", "components": ["web"]}]}
                },
            },
        }
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SvidCA:
    return SvidCA(tmp_path_factory.mktemp("trust-domain"))


@pytest.fixture
def sim(ca: SvidCA) -> Iterator[WfmSimulator]:
    cert = ca.wfm("wfm-server")
    with WfmSimulator(
        str(cert.cert), str(cert.key), str(ca.ca_file), wfm_id=wfm_id(), prefix=PREFIX
    ) as simulator:
        yield simulator


def v1_config(sim: WfmSimulator, ca: SvidCA, tmp_path: Path, **wos: str) -> config.Config:
    issued = ca.device(DEVICE, name=f"device-{tmp_path.name}")
    cert, key = tmp_path / "svid.pem", tmp_path / "svid.key"
    shutil.copy(issued.cert, cert)
    shutil.copy(issued.key, key)
    key.chmod(0o600)
    data = base_config(tmp_path)
    del data["git"]
    data["device"]["id"] = DEVICE
    data["wos"] = {
        "url": sim.url,
        "api": "v1",
        "ca_file": str(ca.ca_file),
        "client_cert": str(cert),
        "client_key": str(key),
        **wos,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load_config(path)


def test_the_v1_source_reads_the_wfm_into_the_model(sim, ca, tmp_path):
    cfg = v1_config(sim, ca, tmp_path)
    assert cfg.desired.source == "wos"
    source = cycle.desired_source(cfg, proxy.DIRECT)
    assert isinstance(source, WfmSource)
    version = sim.publish({DEPLOYMENT: document()})
    result = source.poll()
    assert (result.revision, result.changed) == (str(version), True)
    state = desired.parse_files(source.snapshot(result.revision).files, device_id=DEVICE)
    (d,) = state.deployments
    assert d.components[0].package_location == "oci://127.0.0.1:5000/demo/web:1.2.0"
    assert d.components[0].env["SITE"] == "S1"
    assert source.poll().changed is False
    assert sim.requests("/api/v1/deployments", "GET")[-1].answer == 304


def test_a_server_that_is_not_the_expected_wfm_gets_no_request(sim, ca, tmp_path):
    cfg = v1_config(sim, ca, tmp_path, server_id=wfm_id(wfm="another-wfm"))
    source = cycle.desired_source(cfg, proxy.DIRECT)
    sim.publish({DEPLOYMENT: document()})
    with pytest.raises(SourceError) as err:
        source.poll()
    assert err.value.code == "WFM_SERVER_ID_MISMATCH" and isinstance(err.value, TransientError)
    assert sim.requests("/api/v1/") == []
    assert not (cfg.state_dir / "wfm").exists()


def test_the_source_and_the_report_client_share_one_set_of_pools(sim, ca, tmp_path):
    parts = cycle.Parts.build(v1_config(sim, ca, tmp_path))
    assert isinstance(parts.source, WfmSource)
    assert parts.source._pool is parts.client.pools
