"""The contract's example documents, and builders of documents for the other tests."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from margo_lite import desired, planner
from tests.support import plans

# ../shared/margo-contract.md §2, verbatim.
CONTRACT_COMPOSE_EXAMPLE = b"""\
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: ad9b614e-8912-45f4-a523-372358765def     # deployment id (a UUID from the WOS)
    applicationId: com-northstartida-digitron-orchestrator
  name: com-northstartida-digitron-orchestrator-deployment
  namespace: margo-poc
spec:
  deploymentProfile:
    type: docker-compose            # or helm.v3 (clusters)
    components:
      - name: digitron-orchestrator-docker
        properties:
          packageLocation: https://example.com/digitron/docker/digitron-orchestrator.tar.gz
          keyLocation: https://example.com/digitron/docker/public-key.asc
  parameters:
    siteId:
      value: SID-123-ABC
      targets:
        - pointer: ENV.SITE_ID
          components: [digitron-orchestrator-docker]
"""

# The same deployment with the helm.v3 profile, as the contract describes it (§2: helm.v3
# components carry repository, revision, timeout, wait) and the Margo draft shows it.
CONTRACT_HELM_EXAMPLE = b"""\
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: a3e2f5dc-912e-494f-8395-52cf3769bc06
    applicationId: com-northstartida-digitron-orchestrator
  name: com-northstartida-digitron-orchestrator-deployment
  namespace: margo-poc
spec:
  deploymentProfile:
    type: helm.v3
    components:
      - name: database-services
        properties:
          repository: oci://quay.io/charts/realtime-database-services
          revision: 2.3.7
          timeout: 8m30s
          wait: true
      - name: digitron-orchestrator
        properties:
          repository: oci://northstarida.azurecr.io/charts/northstarida-digitron-orchestrator
          revision: 1.0.9
          wait: true
  parameters:
    siteId:
      value: SID-123-ABC
      targets:
        - pointer: global.siteId
          components: [digitron-orchestrator, database-services]
    cpuLimit:
      value: 4
      targets:
        - pointer: settings.limits.cpu
          components: [digitron-orchestrator]
"""


def test_contract_compose_example_parses():
    state = desired.parse_files({"deployment.yaml": CONTRACT_COMPOSE_EXAMPLE})
    assert state.failures == ()
    (d,) = state.deployments
    assert d.id == "ad9b614e-8912-45f4-a523-372358765def"
    assert d.application_id == "com-northstartida-digitron-orchestrator"
    assert d.name == "com-northstartida-digitron-orchestrator-deployment"
    assert d.namespace == "margo-poc"
    assert d.profile_type == "docker-compose"
    assert d.source == "deployment.yaml document 1"
    (c,) = d.components
    assert c.name == "digitron-orchestrator-docker"
    assert c.package_location == (
        "https://example.com/digitron/docker/digitron-orchestrator.tar.gz"
    )
    assert c.key_location == "https://example.com/digitron/docker/public-key.asc"
    assert not c.package_in_repo
    assert dict(c.env) == {"SITE_ID": "SID-123-ABC"}
    assert dict(c.overlays) == {}
    # A new compose deployment is planned for install and nothing else.
    p = planner.plan(state, {})
    assert [(s.component, s.action) for s in plans.steps(p)] == [
        ("digitron-orchestrator-docker", planner.Action.INSTALL)
    ]


def test_contract_helm_example_parses_and_is_reported_unsupported():
    state = desired.parse_files({"helm.yaml": CONTRACT_HELM_EXAMPLE})
    assert state.failures == ()
    (d,) = state.deployments
    assert d.profile_type == "helm.v3"
    assert [c.name for c in d.components] == ["database-services", "digitron-orchestrator"]
    db, orchestrator = d.components
    assert db.properties["repository"] == "oci://quay.io/charts/realtime-database-services"
    assert db.properties["timeout"] == "8m30s"
    assert db.properties["wait"] is True
    assert dict(orchestrator.overlays) == {"global.siteId": "SID-123-ABC", "settings.limits.cpu": 4}
    assert dict(db.overlays) == {"global.siteId": "SID-123-ABC"}

    p = planner.plan(state, {})
    (dp,) = p.deployments
    assert dp.steps == ()
    assert dp.failure is not None and dp.failure.code == "UNSUPPORTED_PROFILE"
    assert "helm.v3" in dp.failure.message
    assert "Kubernetes cluster" in dp.failure.message
    assert "Helm backend" in dp.failure.message
    record = planner.planned_record(dp, None)
    assert record is not None
    assert record.state is planner.State.FAILED
    assert record.error == dp.failure
    assert {c.state for c in record.components} == {planner.State.FAILED}


# --- builders for the other tests -----------------------------------------------------------


def doc(
    dep_id: str = "dep-1",
    components: tuple[str, ...] = ("web",),
    *,
    params: dict[str, Any] | None = None,
    depends_on: str | None = None,
    profile: str = "docker-compose",
    package: str = "https://example.com/{name}.tar.gz",
) -> dict[str, Any]:
    """A valid ApplicationDeployment as a mapping (change it, then `dump` it)."""
    annotations: dict[str, Any] = {"id": dep_id, "applicationId": "com-example-app"}
    if depends_on is not None:
        annotations[desired.DEPENDS_ON] = depends_on
    if profile == "helm.v3":
        props = [
            {"repository": f"oci://example.com/charts/{n}", "revision": "1.0"} for n in components
        ]
    else:
        props = [{"packageLocation": package.format(name=n)} for n in components]
    return {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {"annotations": annotations, "name": f"{dep_id}-name", "namespace": "ns"},
        "spec": {
            "deploymentProfile": {
                "type": profile,
                "components": [
                    {"name": n, "properties": p} for n, p in zip(components, props, strict=True)
                ],
            },
            "parameters": copy.deepcopy(params) if params is not None else {},
        },
    }


def dump(*documents: Any) -> bytes:
    return yaml.safe_dump_all(documents, sort_keys=False).encode()


def env_param(value: Any, var: str, *components: str) -> dict[str, Any]:
    return {"value": value, "targets": [{"pointer": f"ENV.{var}", "components": list(components)}]}


def files_of(*documents: dict[str, Any]) -> dict[str, bytes]:
    """One file per document, named after its id."""
    return {f"apps/{d['metadata']['annotations']['id']}.yaml": dump(d) for d in documents}
