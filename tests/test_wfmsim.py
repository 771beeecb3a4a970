"""The v1 WFM simulator keeps the rc.3 contract the device relies on: a manifest whose ETag
answers 304, content-addressed documents and bundles whose digests hold (until a fault
switch says otherwise), and mutual TLS that recognises only its own clients."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator

import jsonschema
import pytest
import urllib3

from margo_lite import mtls
from margo_lite.constants import USER_AGENT
from margo_lite.devkit.svidca import SvidCA, wfm_id
from margo_lite.devkit.wfmsim import MANIFEST_TYPE, WfmSimulator, digest
from tests.support import openapi

DOC_A = "id: a\nmetadata: {name: a}\n"
DOC_B = "id: b\nmetadata: {name: b}\n"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SvidCA:
    return SvidCA(tmp_path_factory.mktemp("trust-domain"))


@pytest.fixture
def sim(ca: SvidCA) -> Iterator[WfmSimulator]:
    server = ca.wfm("sim-wfm")
    with WfmSimulator(
        str(server.cert), str(server.key), str(ca.ca_file), wfm_id=wfm_id(), prefix="/p"
    ) as simulator:
        yield simulator


@pytest.fixture
def pool(ca: SvidCA) -> Iterator[mtls.WfmPools]:
    device = ca.device("sim-client")
    with mtls.WfmPools(
        str(device.cert),
        str(device.key),
        str(ca.ca_file),
        retries=False,
        headers={"User-Agent": USER_AGENT},
    ) as p:
        yield p


def _get(pool, url: str, **headers: str) -> urllib3.HTTPResponse:
    return pool.request("GET", url, headers=headers)


def _manifest_schema_errors(manifest: dict) -> list[str]:
    """The rc.3 schema, with the three `required` entries it writes as dotted names
    (`bundle.mediaType`, ...) read as the contract reads them: fields of a non-null bundle."""
    schema = openapi.spec()["components"]["schemas"]["UnsignedAppStateManifest"]
    required = [name for name in schema["required"] if "." not in name]
    fixed = {**schema, "required": required}
    validator = jsonschema.Draft202012Validator(
        {**fixed, "components": openapi.spec()["components"]}
    )
    return [e.message for e in validator.iter_errors(manifest)]


def test_manifest_etag_304_documents_and_bundle(sim, pool):
    assert sim.publish({"a": DOC_A, "b": DOC_B}) == 1
    first = _get(pool, sim.url + "/api/v1/deployments", Accept=MANIFEST_TYPE)
    assert first.status == 200 and first.headers["Content-Type"] == MANIFEST_TYPE
    assert sim.requests()[0].headers["User-Agent"].startswith("margo-lite/")
    manifest = json.loads(first.data)
    assert _manifest_schema_errors(manifest) == []
    assert manifest["manifestVersion"] == 1
    assert first.headers["ETag"] == f'"{digest(first.data)}"'
    again = _get(pool, sim.url + "/api/v1/deployments", **{"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and again.data == b""
    for ref in manifest["deployments"]:
        document = _get(pool, sim.url + ref["url"])
        assert document.status == 200 and digest(document.data) == ref["digest"]
    bundle = _get(pool, sim.url + manifest["bundle"]["url"])
    assert digest(bundle.data) == manifest["bundle"]["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle.data))) as tar:
        assert sorted(tar.getnames()) == ["a.yaml", "b.yaml"]
    sim.publish({})
    empty = json.loads(_get(pool, sim.url + "/api/v1/deployments").data)
    assert empty == {"manifestVersion": 2, "bundle": None, "deployments": []}
    assert _manifest_schema_errors(empty) == []


def test_tamper_rollback_and_replay_switches(sim, pool):
    sim.publish({"a": DOC_A})
    held = _get(pool, sim.url + "/api/v1/deployments").data
    manifest = json.loads(held)
    sim.tamper = "document"
    document = _get(pool, sim.url + manifest["deployments"][0]["url"])
    assert digest(document.data) != manifest["deployments"][0]["digest"]
    sim.tamper = "bundle"
    bundle = _get(pool, sim.url + manifest["bundle"]["url"])
    assert digest(bundle.data) != manifest["bundle"]["digest"]
    sim.tamper = None
    sim.publish({"a": DOC_B}, version=5)
    sim.publish({"a": DOC_A}, version=3)  # a rollback: an older version number, new bytes
    assert json.loads(_get(pool, sim.url + "/api/v1/deployments").data)["manifestVersion"] == 3
    sim.replay = held  # exactly what was served before
    assert _get(pool, sim.url + "/api/v1/deployments").data == held


def test_only_its_own_clients_get_answers(sim, ca):
    stranger = ca.issue("sim-stranger", [wfm_id(wfm="other") + "/client/x"])
    with mtls.WfmPools(
        str(stranger.cert), str(stranger.key), str(ca.ca_file), server_id=wfm_id(), retries=False
    ) as other:
        answer = _get(other, sim.url + "/api/v1/deployments")
    assert answer.status == 403
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert json.loads(answer.data)["title"] == "Forbidden"
