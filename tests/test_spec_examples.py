"""The Margo specification's own example documents (copies in tests/data/margo-v1/examples,
their sources named in its README): the valid ones parse, the invalid ones are refused for
the reason each was written to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from margo_lite import desired, wfmmanifest
from margo_lite.errors import WfmError

EXAMPLES = Path(__file__).parent / "data" / "margo-v1" / "examples"
VALID = sorted((EXAMPLES / "valid").glob("*.yaml"))


def parse(path: Path, device: str | None = None) -> desired.DesiredState:
    return desired.parse_files({path.name: path.read_bytes()}, device_id=device)


def test_every_example_is_here():
    readme = (EXAMPLES / "README.md").read_text()
    kept = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.*"))
    kept.remove("README.md")
    assert len(kept) == 22
    for name in kept:
        assert f"`{name}`" in readme, f"{name} has no source in the README"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_a_valid_example_parses_into_the_model(path):
    state = parse(path, device="edge-01")
    assert not state.failures, [str(f.error) for f in state.failures]
    (d,) = state.deployments
    assert d.application_id == "com-northstartida-digitron-orchestrator"
    assert d.id in ("a3e2f5dc-912e-494f-8395-52cf3769bc06", "ad9b614e-8912-45f4-a523-372358765def")
    if d.profile_type == desired.COMPOSE:
        (c,) = d.components
        assert c.env["SITE_ID"] == "SID-123-ABC" and c.env["POLL_FREQUENCY"] == "120"
        assert c.key_location == "https://northsitarida.com/digitron/docker/public-key.asc"
    else:
        assert d.profile_type == desired.HELM
        assert [c.name for c in d.components] == ["database-services", "digitron-orchestrator"]
        assert d.component("digitron-orchestrator").overlays["settings.siteId"] == "SID-123-ABC"


def test_the_example_for_edge_01_is_refused_on_another_device():
    (failure,) = parse(EXAMPLES / "valid" / "legacy-DesiredState-001.yaml", "edge-02").failures
    assert failure.error.code == "WRONG_DEVICE"


@pytest.mark.parametrize(
    ("name", "code", "field"),
    [
        ("data-model-ApplicationDeployment-001", "INVALID_FIELD", "kind"),
        ("data-model-ApplicationDeployment-002", "INVALID_APPLICATION_ID", "applicationId"),
        ("data-model-ApplicationDeployment-003", "INVALID_APPLICATION_ID", "applicationId"),
        ("data-model-ApplicationDeployment-004", "INVALID_DEPLOYMENT_ID", "id"),
        ("data-models-ApplicationDeployment-002", "INVALID_APPLICATION_ID", "applicationId"),
        ("model-ApplicationDeployment-003", "INVALID_APPLICATION_ID", "applicationId"),
        (
            "spec-ApplicationDeployment-003-invalid_appid2",
            "INVALID_APPLICATION_ID",
            "applicationId",
        ),
        ("legacy-DesiredState-001", "INVALID_APPLICATION_ID", "applicationId"),
        ("legacy-DesiredState-002", "INVALID_APPLICATION_ID", "applicationId"),
    ],
)
def test_an_invalid_example_is_refused_for_its_reason(name, code, field):
    state = parse(EXAMPLES / "invalid" / f"{name}.yaml")
    assert not state.deployments
    (failure,) = state.failures
    assert failure.error.code == code
    assert failure.error.field.endswith(field)
    assert failure.deployment_id is not None  # it fails that deployment, nothing else


def test_the_valid_example_manifest_reads():
    body = (
        EXAMPLES / "manifests" / "valid" / "data-model-DesiredStateManifest-001.json"
    ).read_bytes()
    manifest = wfmmanifest.parse(body)
    assert manifest.version == 101
    assert [dep for dep, _ref in manifest.deployments] == ["a3e2f5dc-912e-494f-8395-52cf3769bc06"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("model-DesiredStateManifest-001", "manifestVersion 0 is outside"),
        ("model-DesiredStateManifest-002", "bundle.mediaType 'application/json'"),
        ("model-DesiredStateManifest-003", "bundle.digest 'invalid-digest'"),
        ("model-DesiredStateManifest-004", "bundle is missing"),
    ],
)
def test_an_invalid_example_manifest_is_refused_for_its_reason(name, reason):
    body = (EXAMPLES / "manifests" / "invalid" / f"{name}.json").read_bytes()
    with pytest.raises(WfmError) as err:
        wfmmanifest.parse(body)
    assert err.value.code == "WFM_MANIFEST_INVALID"
    assert reason in err.value.message
