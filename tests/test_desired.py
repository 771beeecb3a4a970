from __future__ import annotations

import io
import logging
import tarfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from margo_lite import desired, logs, valueclass
from margo_lite.desired.values import freeze
from margo_lite.errors import DESIRED_STATE_CODES, DesiredStateError
from tests.test_desired_docs import CONTRACT_COMPOSE_EXAMPLE, doc, dump, env_param, files_of
from tests.test_yamlload import BILLION_LAUGHS

ID = "dep-1"


def only_failure(files: dict[str, bytes]) -> desired.DocumentFailure:
    state = desired.parse_files(files)
    assert state.deployments == ()
    (failure,) = state.failures
    assert isinstance(failure.error, DesiredStateError)
    assert failure.error.code in DESIRED_STATE_CODES
    return failure


def setter(path: str | tuple[str, ...], value: Any) -> Callable[[dict], None]:
    """Set a dotted path (list indexes as numbers; a tuple for keys with dots) in a document."""

    def change(d: dict) -> None:
        node: Any = d
        parts = path if isinstance(path, tuple) else path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def deleter(path: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        node: Any = d
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[parts[-1]]

    return change


COMP0 = "spec.deploymentProfile.components.0"
FIELD0 = "spec.deploymentProfile.components[0]"


# Each case: a change to a valid document, the code, the field named, whether the id is known.
CASES = [
    (deleter("apiVersion"), "MISSING_FIELD", "apiVersion", True),
    (
        setter("apiVersion", "application.margo.org/v9"),
        "UNSUPPORTED_API_VERSION",
        "apiVersion",
        True,
    ),
    (setter("kind", None), "MISSING_FIELD", "kind", True),
    (setter("metadata", ["x"]), "NOT_A_MAPPING", "metadata", False),
    (deleter("metadata.annotations"), "MISSING_FIELD", "metadata.annotations", False),
    (deleter("metadata.annotations.id"), "MISSING_FIELD", "metadata.annotations.id", False),
    (
        setter("metadata.annotations.id", "../etc"),
        "INVALID_DEPLOYMENT_ID",
        "metadata.annotations.id",
        False,
    ),
    (
        setter("metadata.annotations.id", "a b"),
        "INVALID_DEPLOYMENT_ID",
        "metadata.annotations.id",
        False,
    ),
    (
        setter("metadata.annotations.id", "x" * 129),
        "INVALID_DEPLOYMENT_ID",
        "metadata.annotations.id",
        False,
    ),
    (
        setter("metadata.annotations.id", 12345),
        "INVALID_DEPLOYMENT_ID",
        "metadata.annotations.id",
        False,
    ),
    (
        setter("metadata.annotations.id", "-lead"),
        "INVALID_DEPLOYMENT_ID",
        "metadata.annotations.id",
        False,
    ),
    (
        deleter("metadata.annotations.applicationId"),
        "MISSING_FIELD",
        "metadata.annotations.applicationId",
        True,
    ),
    (
        setter("metadata.annotations.applicationId", "Com.Example"),
        "INVALID_APPLICATION_ID",
        "metadata.annotations.applicationId",
        True,
    ),
    (
        setter("metadata.annotations.applicationId", "a" * 201),
        "INVALID_APPLICATION_ID",
        "metadata.annotations.applicationId",
        True,
    ),
    (deleter("metadata.name"), "MISSING_FIELD", "metadata.name", True),
    (setter("metadata.name", ""), "INVALID_FIELD", "metadata.name", True),
    (setter("metadata.namespace", 7), "INVALID_FIELD", "metadata.namespace", True),
    (deleter("metadata.namespace"), "MISSING_FIELD", "metadata.namespace", True),
    (
        setter(("metadata", "annotations", desired.DEPENDS_ON), "a,b c"),
        "INVALID_FIELD",
        f"metadata.annotations.{desired.DEPENDS_ON}",
        True,
    ),
    (
        setter(("metadata", "annotations", desired.DEPENDS_ON), ["a"]),
        "INVALID_FIELD",
        f"metadata.annotations.{desired.DEPENDS_ON}",
        True,
    ),
    (deleter("spec"), "MISSING_FIELD", "spec", True),
    (setter("spec", "x"), "NOT_A_MAPPING", "spec", True),
    (deleter("spec.deploymentProfile"), "MISSING_FIELD", "spec.deploymentProfile", True),
    (
        setter("spec.deploymentProfile.type", "kubernetes"),
        "UNSUPPORTED_PROFILE",
        "spec.deploymentProfile.type",
        True,
    ),
    (deleter("spec.deploymentProfile.type"), "MISSING_FIELD", "spec.deploymentProfile.type", True),
    (
        deleter("spec.deploymentProfile.components"),
        "MISSING_FIELD",
        "spec.deploymentProfile.components",
        True,
    ),
    (
        setter("spec.deploymentProfile.components", []),
        "INVALID_FIELD",
        "spec.deploymentProfile.components",
        True,
    ),
    (setter(COMP0, "web"), "NOT_A_MAPPING", FIELD0, True),
    (deleter(f"{COMP0}.name"), "MISSING_FIELD", f"{FIELD0}.name", True),
    (setter(f"{COMP0}.name", "web/../x"), "INVALID_FIELD", f"{FIELD0}.name", True),
    (
        setter("spec.deploymentProfile.components.1.name", "WEB"),
        "DUPLICATE_COMPONENT",
        "spec.deploymentProfile.components[1].name",
        True,
    ),
    (deleter(f"{COMP0}.properties"), "MISSING_FIELD", f"{FIELD0}.properties", True),
    (
        deleter(f"{COMP0}.properties.packageLocation"),
        "MISSING_FIELD",
        f"{FIELD0}.properties.packageLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.packageLocation", "file:///etc/passwd"),
        "INVALID_FIELD",
        f"{FIELD0}.properties.packageLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.packageLocation", "../outside/compose.yaml"),
        "INVALID_FIELD",
        f"{FIELD0}.properties.packageLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.packageLocation", "/etc/compose.yaml"),
        "INVALID_FIELD",
        f"{FIELD0}.properties.packageLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.packageLocation", "pkgs/none"),
        "MISSING_PACKAGE",
        f"{FIELD0}.properties.packageLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.keyLocation", "keys/none.asc"),
        "MISSING_PACKAGE",
        f"{FIELD0}.properties.keyLocation",
        True,
    ),
    (
        setter(f"{COMP0}.properties.keyLocation", 3),
        "INVALID_FIELD",
        f"{FIELD0}.properties.keyLocation",
        True,
    ),
    (deleter("spec.parameters"), "MISSING_FIELD", "spec.parameters", True),
    (setter("spec.parameters", ["x"]), "NOT_A_MAPPING", "spec.parameters", True),
    (setter("spec.parameters.p", "x"), "NOT_A_MAPPING", "spec.parameters.p", True),
    (
        setter("spec.parameters.p", {"targets": []}),
        "MISSING_FIELD",
        "spec.parameters.p.value",
        True,
    ),
    (setter("spec.parameters.p", {"value": 1}), "MISSING_FIELD", "spec.parameters.p.targets", True),
    (
        setter("spec.parameters.p", {"value": 1, "targets": []}),
        "INVALID_FIELD",
        "spec.parameters.p.targets",
        True,
    ),
    (
        setter("spec.parameters.p", {"value": 1, "targets": ["x"]}),
        "NOT_A_MAPPING",
        "spec.parameters.p.targets[0]",
        True,
    ),
    (
        setter("spec.parameters.p", {"value": 1, "targets": [{"components": ["web"]}]}),
        "MISSING_FIELD",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter("spec.parameters.p", {"value": 1, "targets": [{"pointer": "ENV.X"}]}),
        "MISSING_FIELD",
        "spec.parameters.p.targets[0].components",
        True,
    ),
    (
        setter("spec.parameters.p", env_param(1, "X", "nope")),
        "UNKNOWN_COMPONENT_IN_PARAMETER",
        "spec.parameters.p.targets[0].components[0]",
        True,
    ),
    (
        setter("spec.parameters.p", env_param(1, "X", "web", "db", "cache")),
        "UNKNOWN_COMPONENT_IN_PARAMETER",
        "spec.parameters.p.targets[0].components[2]",
        True,
    ),
    (
        setter("spec.parameters.p", env_param(1, "1X", "web")),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter("spec.parameters.p", env_param(1, "A-B", "web")),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter("spec.parameters.p", env_param({"a": 1}, "X", "web")),
        "INVALID_FIELD",
        "spec.parameters.p.value",
        True,
    ),
    (
        setter("spec.parameters.p", env_param(None, "X", "web")),
        "INVALID_FIELD",
        "spec.parameters.p.value",
        True,
    ),
    (
        # A YAML date is no JSON value: refused, never converted or skipped (issue 13).
        setter("spec.parameters.p", env_param(__import__("datetime").date(2024, 1, 2), "X", "web")),
        "COMPOSE_INVALID",
        "spec.parameters.p.value",
        True,
    ),
    (
        setter(
            "spec.parameters.p",
            {"value": 1, "targets": [{"pointer": "/services/web/image", "components": ["web"]}]},
        ),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter(
            "spec.parameters.p",
            {"value": 1, "targets": [{"pointer": "services", "components": ["web"]}]},
        ),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter(
            "spec.parameters.p",
            {"value": 1, "targets": [{"pointer": "services..image", "components": ["web"]}]},
        ),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter(
            "spec.parameters.p",
            {"value": 1, "targets": [{"pointer": "name.x", "components": ["web"]}]},
        ),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
    (
        setter(
            "spec.parameters.p",
            {"value": 1, "targets": [{"pointer": "services.web.ports[0]", "components": ["web"]}]},
        ),
        "UNSUPPORTED_POINTER",
        "spec.parameters.p.targets[0].pointer",
        True,
    ),
]


@pytest.mark.parametrize(("change", "code", "field", "id_known"), CASES)
def test_every_violation_has_its_code_and_names_file_document_and_field(
    change, code, field, id_known
):
    good = doc(ID, ("web", "db"), params={"p": env_param("v", "X", "web")})
    bad = doc(ID, ("web", "db"), params={"p": env_param("v", "X", "web")})
    change(bad)
    # the bad document is the second of its file; a valid deployment is in the same file
    failure = only_failure_among({"dir/sub/app.yaml": dump(doc("other"), bad)}, "other")
    err = failure.error
    assert err.code == code, err
    assert err.field == field
    assert err.source == "dir/sub/app.yaml document 2" == failure.source
    text = str(err)
    assert text.startswith(f"dir/sub/app.yaml document 2: {field}: ")
    assert text.endswith(f"[{code}]")
    assert (failure.deployment_id == ID) is id_known
    assert err.deployment_id == failure.deployment_id
    # the unchanged document is valid: the change alone made the difference
    assert desired.parse_files({"a.yaml": dump(good)}).failures == ()


def only_failure_among(files: dict[str, bytes], good_id: str) -> desired.DocumentFailure:
    state = desired.parse_files(files)
    assert [d.id for d in state.deployments] == [good_id]
    (failure,) = state.failures
    assert failure.error.code in DESIRED_STATE_CODES
    return failure


def test_every_parser_code_is_exercised():
    tested = {case[1] for case in CASES} | {
        "INVALID_YAML",
        "YAML_TOO_COMPLEX",
        "YAML_TOO_LARGE",
        "DUPLICATE_DEPLOYMENT_ID",
        "CONFLICTING_PARAMETERS",
        "WRONG_DEVICE",  # tests/test_v1doc.py: only the v1 shape names a device
        "DEPLOYMENT_ID_MISMATCH",  # only with file_ids (a WFM manifest)
    }
    planner_codes = {"DEPENDENCY_CYCLE", "WAITING_FOR_DEPENDENCY", "NOT_STARTED"}
    assert set(DESIRED_STATE_CODES) == tested | planner_codes


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"apiVersion: [\n", "INVALID_YAML"),
        (b"a: 1\na: 2\n", "INVALID_YAML"),
        (b"\x00\x01\x02binary", "INVALID_YAML"),
        (b"!!python/object/apply:os.system ['true']\n", "INVALID_YAML"),
        (BILLION_LAUGHS.encode(), "YAML_TOO_COMPLEX"),
        (b"[" * 5000, "YAML_TOO_COMPLEX"),
        (b"- 1\n", "NOT_A_MAPPING"),
        (b"just text\n", "NOT_A_MAPPING"),
    ],
    ids=["syntax", "dup-key", "binary", "python-tag", "alias-bomb", "deep", "list", "scalar"],
)
def test_unreadable_files_fail_without_an_id(data, code):
    failure = only_failure({"x.yaml": data})
    assert failure.error.code == code
    assert failure.deployment_id is None
    assert str(failure.error).startswith("x.yaml")
    assert not desired.parse_files({"x.yaml": data}).complete


def test_failures_without_an_id_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="margo_lite")
    bad = doc("b")
    bad["metadata"]["namespace"] = 1
    desired.parse_files({"a.yaml": b"[", "b.yaml": dump(bad)})
    assert "a.yaml: line 1, column 2: expected the node content" in caplog.text
    assert "no deployment is removed" in caplog.text
    assert "b.yaml" not in caplog.text  # its id is known: the agent reports it


def test_billion_laughs_fails_fast():
    started = time.monotonic()
    failure = only_failure({"bomb.yaml": BILLION_LAUGHS.encode(), "notes.txt": b"x"})
    assert failure.error.code == "YAML_TOO_COMPLEX"
    assert time.monotonic() - started < 30  # generous: only guards against a hang


def test_size_limits():
    limits = desired.Limits(max_file_bytes=2000, max_total_bytes=3000)
    big = dump(doc("big")) + b"#" * 2000
    state = desired.parse_files({"a.yaml": big, "b.yaml": dump(doc("b"))}, limits)
    assert [d.id for d in state.deployments] == ["b"]
    assert [(f.source, f.error.code) for f in state.failures] == [("a.yaml", "YAML_TOO_LARGE")]
    files = {f"{i:02}.yaml": dump(doc(f"d{i}")) for i in range(20)}
    state = desired.parse_files(files, limits)
    assert 0 < len(state.deployments) < 20
    assert {f.error.code for f in state.failures} == {"YAML_TOO_LARGE"}
    assert "together exceed 3000 bytes" in str(state.failures[0].error)


def test_document_count_limit_keeps_the_id_when_it_can():
    limits = desired.Limits(max_documents=2)
    state = desired.parse_files({"a.yaml": dump(doc("a"), doc("b"), doc("c"))}, limits)
    assert [d.id for d in state.deployments] == ["a", "b"]
    (failure,) = state.failures
    assert (failure.deployment_id, failure.error.code) == ("c", "YAML_TOO_COMPLEX")


def test_documents_are_found_recursively_and_other_files_ignored(caplog):
    caplog.set_level(logging.INFO, logger="margo_lite")
    files = {
        "a.yml": dump(doc("a"), None, {"kind": "ConfigMap", "metadata": {}}),
        "deep/er/b.yaml": dump(doc("b")),
        "deep/readme.md": b"# not yaml: [",
        "c.YAML.txt": b"::",
        "empty.yaml": b"",
        "comment.yaml": b"# nothing\n",
    }
    state = desired.parse_files(files)
    assert [d.id for d in state.deployments] == ["a", "b"]
    assert state.failures == ()
    assert state.complete
    assert "a.yml document 3: kind 'ConfigMap' is not ApplicationDeployment; ignored" in caplog.text


def test_a_kindless_margo_document_is_a_failure_not_ignored():
    bad = doc(ID)
    del bad["kind"]
    failure = only_failure({"a.yaml": dump(bad)})
    assert (failure.error.code, failure.deployment_id) == ("MISSING_FIELD", ID)


def test_bad_document_fails_alone():
    bad = doc("bad")
    bad["spec"]["deploymentProfile"]["type"] = "lxc"
    state = desired.parse_files(files_of(doc("one"), bad, doc("two")))
    assert [d.id for d in state.deployments] == ["one", "two"]
    (failure,) = state.failures
    assert (failure.deployment_id, failure.error.code) == ("bad", "UNSUPPORTED_PROFILE")
    assert state.complete


def test_a_file_holds_the_deployment_it_is_listed_under_or_fails_it():
    broken = doc("three")
    broken["spec"]["deploymentProfile"]["type"] = "lxc"
    files = {"one.yaml": dump(doc("one")), "two.yaml": dump(doc("other")), "3.yaml": dump(broken)}
    listed = {"one.yaml": "one", "two.yaml": "two", "3.yaml": "3"}
    state = desired.parse_files(files, file_ids=listed)
    assert [d.id for d in state.deployments] == ["one"]
    failures = {f.deployment_id: f.error.code for f in state.failures}
    # a document under another id fails the listed deployment; any other failure of a listed
    # file is the listed deployment's too (never an unknown id that would hold every removal)
    assert failures == {"two": "DEPLOYMENT_ID_MISMATCH", "3": "UNSUPPORTED_PROFILE"}
    # without file_ids (Git) a file's name means nothing
    assert sorted(d.id for d in desired.parse_files(files).deployments) == ["one", "other"]


def test_duplicate_ids_fail_every_document_using_them():
    state = desired.parse_files(
        {"a.yaml": dump(doc("Dup"), doc("ok")), "b.yaml": dump(doc("dup", ("x",)))}
    )
    assert [d.id for d in state.deployments] == ["ok"]
    assert sorted((f.source, f.deployment_id, f.error.code) for f in state.failures) == [
        ("a.yaml document 1", "Dup", "DUPLICATE_DEPLOYMENT_ID"),
        ("b.yaml document 1", "dup", "DUPLICATE_DEPLOYMENT_ID"),
    ]
    assert "also used by b.yaml document 1" in str(state.failures[0].error)


def test_duplicate_of_a_failed_document_fails_too():
    bad = doc("x")
    bad["metadata"]["namespace"] = None
    state = desired.parse_files({"a.yaml": dump(bad, doc("x"))})
    assert state.deployments == ()
    assert [f.error.code for f in state.failures] == ["MISSING_FIELD", "DUPLICATE_DEPLOYMENT_ID"]


@pytest.mark.parametrize(
    "dep_id", ["a", "0", "A.b_c-d", "x" * 128, "ad9b614e-8912-45f4-a523-372358765def"]
)
def test_ids_need_no_uuid_nor_minimum_length(dep_id):
    (d,) = desired.parse_files(files_of(doc(dep_id))).deployments
    assert d.id == dep_id


def test_parameters_resolve_per_component():
    params = {
        "site": {
            "value": "S1",
            "targets": [
                {"pointer": "ENV.SITE", "components": ["web", "db"]},
                {"pointer": "services.web.labels.site", "components": ["web"]},
            ],
        },
        "port": env_param(8080, "PORT", "web"),
        "debug": env_param(True, "DEBUG", "db"),
        "ratio": env_param(0.5, "RATIO", "db"),
        "replicas": {
            "value": {"cpus": "0.5"},
            "targets": [{"pointer": "services.db.deploy.resources.limits", "components": ["db"]}],
        },
    }
    (d,) = desired.parse_files(files_of(doc(ID, ("web", "db"), params=params))).deployments
    web, db = d.components
    assert dict(web.env) == {"SITE": "S1", "PORT": "8080"}
    assert dict(db.env) == {"SITE": "S1", "DEBUG": "true", "RATIO": "0.5"}
    assert dict(web.overlays) == {"services.web.labels.site": "S1"}
    assert desired.thaw(db.overlays) == {"services.db.deploy.resources.limits": {"cpus": "0.5"}}


@pytest.mark.parametrize(
    "params",
    [
        {"a": env_param(1, "X", "web"), "b": env_param(2, "X", "web")},
        {
            "a": {"value": 1, "targets": [{"pointer": "services.web", "components": ["web"]}]},
            "b": {
                "value": 2,
                "targets": [{"pointer": "services.web.image", "components": ["web"]}],
            },
        },
        {
            "a": {"value": 1, "targets": [{"pointer": "x-a.b", "components": ["web"]}]},
            "b": {"value": 2, "targets": [{"pointer": "x-a.b", "components": ["web"]}]},
        },
        {
            "a": {
                "value": 1,
                "targets": [{"pointer": "services.web.image", "components": ["web"]}],
            },
            "b": {"value": 2, "targets": [{"pointer": "services.web", "components": ["web"]}]},
        },
    ],
)
def test_conflicting_parameters(params):
    failure = only_failure(files_of(doc(ID, params=params)))
    assert failure.error.code == "CONFLICTING_PARAMETERS"
    assert "'a' and 'b'" in failure.error.message


def test_same_variable_for_different_components_is_no_conflict():
    params = {"a": env_param(1, "X", "web"), "b": env_param(2, "X", "db")}
    (d,) = desired.parse_files(files_of(doc(ID, ("web", "db"), params=params))).deployments
    assert [c.env["X"] for c in d.components] == ["1", "2"]


def test_env_pointer_on_helm_is_unsupported():
    failure = only_failure(
        files_of(doc(ID, profile="helm.v3", params={"p": env_param(1, "X", "web")}))
    )
    assert failure.error.code == "UNSUPPORTED_POINTER"
    assert "docker-compose components only" in failure.error.message


def test_model_is_immutable():
    (d,) = desired.parse_files({"a.yaml": CONTRACT_COMPOSE_EXAMPLE}).deployments
    c = d.components[0]
    with pytest.raises(valueclass.FrozenInstanceError):
        d.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.env["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        c.properties["packageLocation"] = "x"  # type: ignore[index]


# --- digests -------------------------------------------------------------------------------


def parse_one(files: dict[str, bytes]) -> desired.Deployment:
    state = desired.parse_files(files)
    assert state.failures == (), state.failures
    (d,) = state.deployments
    return d


def test_digests_ignore_formatting_and_key_order_but_not_content():
    base = doc(ID, ("web", "db"), params={"p": env_param("v", "X", "web")})
    a = parse_one({"a.yaml": dump(base)})
    reordered = {k: base[k] for k in reversed(list(base))}
    b = parse_one({"elsewhere/b.yml": b"# comment\n" + yaml.safe_dump(reordered).encode()})
    assert a.digest == b.digest
    assert [c.digest for c in a.components] == [c.digest for c in b.components]

    changed = doc(ID, ("web", "db"), params={"p": env_param("w", "X", "web")})
    c = parse_one({"a.yaml": dump(changed)})
    assert c.digest != a.digest
    assert c.components[0].digest != a.components[0].digest
    assert c.components[1].digest == a.components[1].digest


def test_value_types_are_kept_apart_in_digests():
    one = parse_one(
        files_of(
            doc(
                ID,
                params={
                    "p": {"value": 1, "targets": [{"pointer": "x-a.b", "components": ["web"]}]}
                },
            )
        )
    )
    text = parse_one(
        files_of(
            doc(
                ID,
                params={
                    "p": {"value": "1", "targets": [{"pointer": "x-a.b", "components": ["web"]}]}
                },
            )
        )
    )
    assert one.components[0].digest != text.components[0].digest


def test_deployment_digest_follows_metadata_and_dependencies():
    base = parse_one(files_of(doc(ID)))
    renamed = doc(ID)
    renamed["metadata"]["namespace"] = "other"
    assert parse_one(files_of(renamed)).digest != base.digest
    assert parse_one(files_of(doc(ID, depends_on="x"))).digest != base.digest
    assert parse_one(files_of(doc(ID, depends_on="x"))).components == base.components


# --- in-repository packages ----------------------------------------------------------------

COMPOSE = b"services:\n  web:\n    image: localhost/web:1\n    ports: ['8080:80']\n"


def tarball(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(
    ("location", "package_files", "changed"),
    [
        ("pkgs/web/compose.yaml", {"pkgs/web/compose.yaml": COMPOSE}, "pkgs/web/compose.yaml"),
        (
            "./pkgs/web/",
            {"pkgs/web/compose.yaml": COMPOSE, "pkgs/web/app.conf": b"x=1"},
            "pkgs/web/app.conf",
        ),
        (
            "pkgs/web.tar.gz",
            {"pkgs/web.tar.gz": tarball({"docker-compose.yml": COMPOSE})},
            "pkgs/web.tar.gz",
        ),
    ],
)
def test_in_repo_package_bytes_are_part_of_the_digest(location, package_files, changed):
    files = {
        "apps/a.yaml": dump(doc(ID, package=location)),
        **package_files,
        "pkgs/other.txt": b"o",
    }
    first = parse_one(files)
    (c,) = first.components
    assert c.package_in_repo
    assert c.package_location == location.removeprefix("./").rstrip("/")
    assert parse_one(dict(files)).digest == first.digest
    files[changed] = files[changed] + b"\n# changed\n"
    second = parse_one(files)
    assert second.components[0].digest != c.digest
    assert second.digest != first.digest
    files["pkgs/other.txt"] = b"unrelated"
    assert parse_one(files).components[0].digest == second.components[0].digest


def test_in_repo_key_bytes_are_part_of_the_digest():
    d = doc(ID)
    d["spec"]["deploymentProfile"]["components"][0]["properties"]["keyLocation"] = "keys/k.asc"
    files = {"a.yaml": dump(d), "keys/k.asc": b"KEY1"}
    first = parse_one(files)
    assert first.components[0].key_in_repo
    assert (
        parse_one({**files, "keys/k.asc": b"KEY2"}).components[0].digest
        != first.components[0].digest
    )


def test_in_repo_compose_file_is_not_reported_as_an_ignored_document(caplog):
    caplog.set_level(logging.INFO, logger="margo_lite")
    parse_one({"a.yaml": dump(doc(ID, package="pkgs/web")), "pkgs/web/compose.yaml": COMPOSE})
    assert "ignored" not in caplog.text


def test_pointer_is_checked_against_an_in_repo_compose_file():
    params = {
        "img": {
            "value": "x",
            "targets": [{"pointer": "services.web.ports.extra", "components": ["web"]}],
        }
    }
    files = {
        "a.yaml": dump(doc(ID, params=params, package="pkgs/web")),
        "pkgs/web/compose.yaml": COMPOSE,
    }
    failure = only_failure(files)
    assert failure.error.code == "UNSUPPORTED_POINTER"
    assert failure.error.field == f"{FIELD0}.properties.packageLocation"
    assert "pkgs/web/compose.yaml" in failure.error.message
    assert "services.web.ports is a list" in failure.error.message
    params["img"]["targets"][0]["pointer"] = "services.web.image"
    files["a.yaml"] = dump(doc(ID, params=params, package="pkgs/web"))
    (c,) = parse_one(files).components
    assert dict(c.overlays) == {"services.web.image": "x"}


def test_apply_overlays():
    compose = yaml.safe_load(COMPOSE)
    out = desired.apply_overlays(
        compose,
        freeze(
            {
                "services.web.image": "localhost/web:2",
                "services.web.environment.A": "1",
                "x-meta.owner": {"team": ["a"]},
            }
        ),
    )
    assert out == {
        "services": {
            "web": {"image": "localhost/web:2", "ports": ["8080:80"], "environment": {"A": "1"}}
        },
        "x-meta": {"owner": {"team": ["a"]}},
    }
    assert compose == yaml.safe_load(COMPOSE)  # the input is left alone
    with pytest.raises(DesiredStateError) as err:
        desired.apply_overlays(compose, {"services.web.image.tag": "2"})
    assert err.value.code == "UNSUPPORTED_POINTER"
    with pytest.raises(DesiredStateError):
        desired.apply_overlays(["not", "a", "mapping"], {"services.a": 1})


def test_depends_on_annotation():
    (d,) = desired.parse_files(files_of(doc(ID, depends_on=" a, b,,a ,"))).deployments
    assert d.depends_on == ("a", "b")


def test_secrets_stay_out_of_reprs_and_logs():
    d = doc(ID, params={"pw": env_param("hunter2-parameter", "PASSWORD", "web")})
    url = "https://user:pkg-pass-7781@example.com/web.tgz"
    d["spec"]["deploymentProfile"]["components"][0]["properties"]["packageLocation"] = url
    (dep,) = desired.parse_files(files_of(d)).deployments
    assert "hunter2-parameter" not in repr(dep)
    assert "pkg-pass-7781" not in logs.redact(f"GET {url}")
    d["spec"]["deploymentProfile"]["components"][0]["properties"]["packageLocation"] = (
        "https://ghp-token-5521@example.com/web.tgz"
    )
    desired.parse_files(files_of(d))
    assert "ghp-token-5521" not in logs.redact("https://ghp-token-5521@example.com/web.tgz")
    assert {dep.components[0]: 1}  # hashable, though it holds mappings
    assert len({dep, dep}) == 1


def test_a_url_that_does_not_parse_is_invalid():
    d = doc(ID, package="https://[::1/{name}.tgz")
    failure = only_failure(files_of(d))
    assert (failure.error.code, failure.error.field) == (
        "INVALID_FIELD",
        f"{FIELD0}.properties.packageLocation",
    )


@pytest.mark.parametrize(
    ("prop", "value", "code"),
    [
        ("repository", None, "MISSING_FIELD"),
        ("wait", "yes", "INVALID_FIELD"),
        ("timeout", ["8m"], "INVALID_FIELD"),
    ],
)
def test_helm_properties_are_checked(prop, value, code):
    d = doc(ID, profile="helm.v3")
    props = d["spec"]["deploymentProfile"]["components"][0]["properties"]
    if value is None:
        del props[prop]
    else:
        props[prop] = value
    failure = only_failure(files_of(d))
    assert (failure.error.code, failure.error.field) == (code, f"{FIELD0}.properties.{prop}")


@pytest.mark.parametrize("kind", ["ApplicationDeploymnet", "applicationdeployment", None])
def test_a_misspelt_or_missing_kind_fails_the_deployment_instead_of_removing_it(kind):
    bad = doc("dep-typo")
    if kind is None:
        del bad["kind"]
    else:
        bad["kind"] = kind
    state = desired.parse_files(files_of(bad, doc("dep-ok")))
    assert [d.id for d in state.deployments] == ["dep-ok"]
    (failure,) = state.failures
    assert failure.deployment_id == "dep-typo"  # reported Failed; what runs stays


def test_another_kind_in_the_margo_group_is_ignored():
    other = {"apiVersion": "application.margo.org/v1alpha1", "kind": "ApplicationDescription"}
    state = desired.parse_files({"desc.yaml": dump(other), **files_of(doc("dep-ok"))})
    assert [d.id for d in state.deployments] == ["dep-ok"] and state.failures == ()


def test_refused_oversized_files_do_not_starve_the_others():
    limits = desired.Limits(max_file_bytes=1000, max_total_bytes=3000)
    files = {f"big-{n}.yaml": b"#" * 1500 for n in range(4)}
    files.update(files_of(doc("dep-ok")))
    state = desired.parse_files(files, limits)
    assert [d.id for d in state.deployments] == ["dep-ok"]
    assert {f.error.code for f in state.failures} == {"YAML_TOO_LARGE"}
