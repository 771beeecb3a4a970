"""The Margo 1.0 ApplicationDeployment shape: parsed into the one model, or refused with a code."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from margo_lite import desired, planner
from margo_lite.desired.model import is_v1
from tests.support.hypo import examples
from tests.test_desired_properties import check, paths, values

SETTINGS = settings(
    max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ID = "a3e2f5dc-912e-494f-8395-52cf3769bc06"
BAD, GOOD = "00000000-0000-4000-8000-00000000000b", "00000000-0000-4000-8000-00000000000c"


def v1(dep: str = ID, **over: Any) -> dict:
    document = {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "id": dep,
        "metadata": {"name": "digitron", "namespace": "margo-poc", "deviceId": "dev-1"},
        "spec": {
            "applicationId": "com-northstar-digitron",
            "deploymentProfile": {
                "type": "compose",
                "components": [
                    {
                        "name": "digitron",
                        "properties": {
                            "repository": "oci://registry.example:5000/apps/digitron",
                            "revision": "1.0.9",
                            "wait": True,
                            "timeout": "5m0s",
                        },
                    }
                ],
            },
            "parameters": {
                "siteId": {
                    "value": "SID-1",
                    "targets": [{"pointer": "SITE_ID", "components": ["digitron"]}],
                },
                "poll": {
                    "value": 120,
                    "targets": [{"pointer": "ENV.POLL", "components": ["digitron"]}],
                },
            },
        },
    }
    for path, value in over.items():
        node = document
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return document


DELETE = object()
COMPONENTS = "spec__deploymentProfile__components"


def comp(extra: dict | None = None, **props: Any) -> dict:
    """An override of the component list: one component with `props`."""
    return {COMPONENTS: [{"name": "a", "properties": props, **(extra or {})}]}


def target(param: str, pointer: str, component: str = "digitron") -> dict:
    key = f"spec__parameters__{param}__targets"
    return {key: [{"pointer": pointer, "components": [component]}]}


def parse(*docs: dict, device: str | None = "dev-1") -> desired.DesiredState:
    return desired.parse_files({"d.yaml": yaml.safe_dump_all(docs).encode()}, device_id=device)


def failure_code(document: dict, device: str | None = "dev-1") -> str:
    state = parse(document, device=device)
    assert not state.deployments, state
    (failure,) = state.failures
    return failure.error.code


def test_a_v1_compose_document_becomes_the_one_model():
    state = parse(v1())
    assert not state.failures
    (d,) = state.deployments
    assert (d.id, d.application_id, d.name, d.namespace) == (
        ID, "com-northstar-digitron", "digitron", "margo-poc",
    )  # fmt: skip
    assert d.profile_type == desired.COMPOSE
    (c,) = d.components
    assert c.package_location == "oci://registry.example:5000/apps/digitron:1.0.9"
    assert c.properties["revision"] == "1.0.9"
    assert dict(c.env) == {"SITE_ID": "SID-1", "POLL": "120"}


def test_apiversion_and_kind_may_be_absent_and_extensions_are_allowed():
    ext = {"vendor": {"a": 1}}
    state = parse(
        v1(
            apiVersion=DELETE,
            kind=DELETE,
            **{
                "spec__x-acme-extensions": ext,
                "spec__deploymentProfile__x-acme-extensions": ext,
                "spec__deploymentProfile__deviceConstraints": {
                    "capacityRequirements": {"memory": "1Gi"}
                },
                "spec__parameters": DELETE,
            },
        )
    )
    assert not state.failures and state.deployments[0].id == ID


def test_the_same_deployment_in_both_shapes_is_the_same_model_but_for_its_source():
    draft = {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {
            "name": "digitron",
            "namespace": "margo-poc",
            "annotations": {"id": ID, "applicationId": "com-northstar-digitron"},
        },
        "spec": {
            "deploymentProfile": {
                "type": "docker-compose",
                "components": [
                    {"name": "digitron", "properties": {"packageLocation": "https://x/p.tgz"}}
                ],
            },
            "parameters": {
                "s": {"value": "1", "targets": [{"pointer": "ENV.S", "components": ["digitron"]}]}
            },
        },
    }
    package = {"name": "digitron", "properties": {"packageLocation": "https://x/p.tgz"}}
    ours = v1(**{COMPONENTS: [package], **target("siteId", "S")})
    ours["spec"]["parameters"] = {"s": ours["spec"]["parameters"]["siteId"]}
    ours["spec"]["parameters"]["s"]["value"] = "1"
    (a,) = parse(draft).deployments
    (b,) = parse(ours).deployments
    assert a.digest == b.digest


def test_a_helm_deployment_parses_and_the_planner_fails_it_as_unsupported():
    helm = v1(**{"spec__deploymentProfile__type": "helm", "spec__parameters": {}})
    state = parse(helm)
    (d,) = state.deployments
    assert d.profile_type == desired.HELM
    (dp,) = planner.plan(state, {}).deployments
    assert dp.steps == ()
    assert dp.failure is not None and dp.failure.code == "UNSUPPORTED_PROFILE"


@pytest.mark.parametrize(
    ("pattern", "device", "ok"),
    [
        ("dev-1", "dev-1", True),
        ("dev-2", "dev-1", False),
        ("gw/*", "gw/sensor-1", True),
        ("gw/*", "gw", False),
        ("gw/*", "gwx/sensor-1", False),
        ("gw/zone/*", "gw/zone/s1", True),
        ("gw/s1", "gw/s1", True),
        ("DEV-1", "dev-1", False),
    ],
)
def test_a_document_for_another_device_is_refused(pattern, device, ok):
    state = parse(v1(metadata__deviceId=pattern), device=device)
    if ok:
        assert state.deployments and not state.failures
    else:
        (failure,) = state.failures
        assert failure.error.code == "WRONG_DEVICE"
        assert failure.deployment_id == ID  # it fails that deployment only, by id


def test_without_a_device_to_check_against_any_device_id_is_read():
    assert parse(v1(metadata__deviceId="other"), device=None).deployments


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"id": DELETE}, "MISSING_FIELD"),
        ({"id": "../etc"}, "INVALID_DEPLOYMENT_ID"),
        ({"id": 5}, "INVALID_DEPLOYMENT_ID"),
        ({"id": "web-1"}, "INVALID_DEPLOYMENT_ID"),  # a top-level id is a UUID
        ({"metadata__annotations": {"id": "other"}}, "INVALID_FIELD"),
        ({"apiVersion": "deployment.margo.org/v9"}, "UNSUPPORTED_API_VERSION"),
        ({"kind": "Deployment"}, "INVALID_FIELD"),
        ({"metadata": "x"}, "NOT_A_MAPPING"),
        ({"metadata__deviceId": "a b"}, "INVALID_FIELD"),
        ({"metadata__deviceId": "*"}, "INVALID_FIELD"),
        ({"metadata__labels": {"a": 1}}, "INVALID_FIELD"),
        ({"spec__applicationId": "Upper_Case"}, "INVALID_APPLICATION_ID"),
        ({"spec__applicationId": "a" * 201}, "INVALID_APPLICATION_ID"),
        ({"spec__applicationId": DELETE}, "MISSING_FIELD"),
        ({"spec__extra": 1}, "INVALID_FIELD"),
        ({"spec__x-acme-extensions": "not a mapping"}, "NOT_A_MAPPING"),
        ({"spec__x-Bad-extensions": {}}, "INVALID_FIELD"),
        ({"spec__deploymentProfile__type": "kubernetes"}, "UNSUPPORTED_PROFILE"),
        ({"spec__deploymentProfile__type": DELETE}, "MISSING_FIELD"),
        ({"spec__deploymentProfile__extra": 1}, "INVALID_FIELD"),
        ({COMPONENTS: []}, "INVALID_FIELD"),
        (comp({"extra": 1}, repository="oci://x", revision="1.0.0"), "INVALID_FIELD"),
        (comp(repository="https://x", revision="1.0.0"), "INVALID_FIELD"),
        (comp(repository="oci://x", revision="v1.0.0"), "INVALID_FIELD"),
        (comp(repository="oci://x", revision=1.0), "INVALID_FIELD"),
        (comp(repository="oci://x"), "MISSING_FIELD"),
        (comp(repository="oci://x", revision="1.0.0", timeout="5 minutes"), "INVALID_FIELD"),
        (comp(repository="oci://x", revision="1.0.0", wait="yes"), "INVALID_FIELD"),
        (target("siteId", "SITE_ID", "nope"), "UNKNOWN_COMPONENT_IN_PARAMETER"),
        (target("siteId", "1BAD"), "UNSUPPORTED_POINTER"),
        (target("poll", "SITE_ID"), "CONFLICTING_PARAMETERS"),
    ],
)
def test_a_broken_v1_document_fails_its_deployment_with_a_code(over, code):
    assert failure_code(v1(**over)) == code


def test_a_broken_v1_document_does_not_stop_the_others():
    state = parse(v1(BAD, spec__extra=1), v1(GOOD))
    assert [d.id for d in state.deployments] == [GOOD]
    assert [f.deployment_id for f in state.failures] == [BAD]


def test_the_v1_shape_is_recognised_by_its_own_fields():
    assert is_v1(v1())
    assert is_v1({"metadata": {"deviceId": "x"}})
    assert is_v1({"spec": {"applicationId": "x"}})
    assert not is_v1({"metadata": {"annotations": {"id": "x"}}, "spec": {}})
    assert not is_v1(["id"])


BASE = v1()
BASE_PATHS = paths(BASE)


@SETTINGS
@given(st.data())
def test_v1_documents_with_fields_broken_give_the_model_or_coded_failures(data):
    document = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(BASE_PATHS))
        node: Any = document
        try:
            for key in path[:-1]:
                node = node[key]
            if data.draw(st.booleans()):
                node[path[-1]] = data.draw(values)
            else:
                del node[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue
    state = parse(document, v1(GOOD))
    check(state)
    assert GOOD in [d.id for d in state.deployments]


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["id", "metadata", "spec", "apiVersion", "kind"]), values, max_size=5
    )
)
def test_any_mapping_with_v1_keys_gives_the_model_or_coded_failures(document):
    check(parse(document))
