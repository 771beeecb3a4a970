"""The canonical compose document, the pointer grammar, and what self-heal verifies.

Pure parts, on real folders: one document of plain JSON types built once from a package and
parameters (issue 13's root causes 1, 2 and 4), names derived from the project, argv words
that cannot be read as options (root cause 3), and a package changed under a running
deployment found before anything is started from it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from margo_lite import composedoc, desired, pointer, policy
from margo_lite.backends import ComponentUnit, builtin, project
from margo_lite.backends.engine import Podman
from margo_lite.config import PackagesConfig, PolicyConfig
from margo_lite.errors import ComposeError, MargoLiteError, PackageTransientError, PolicyError
from margo_lite.packages import PackageStore

DEVICE = "gw-doc"
PROJECT = project.project_name("dep", "web", device=DEVICE)


def package(tmp_path: Path, compose: str, name: str = "pkg") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "compose.yaml").write_text(compose)
    return folder.resolve()


def build(folder: Path, overlays: dict | None = None) -> dict:
    return composedoc.build(
        folder, {}, overlays or {}, deployment_id="dep", component="web", device=DEVICE
    )


# --- plain values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [1, dt.date(2026, 1, 1)]}, "x.a.1"),
        ({"a": (1, 2)}, "x.a"),
        ({"a": MappingProxyType({"b": 1})}, "x.a"),
        ({1: "one"}, "x"),
        ({"a": float("nan")}, "x.a"),
        ({"a": {"b"}}, "x.a"),
    ],
)
def test_anything_but_plain_json_is_refused_naming_its_path(value, where) -> None:
    with pytest.raises(ComposeError) as refused:
        composedoc.plain(value, "x")
    assert refused.value.code == "COMPOSE_INVALID"
    assert refused.value.message.startswith(where + ":")


def test_a_date_in_the_compose_file_is_refused_not_crashed_on(tmp_path: Path) -> None:
    folder = package(tmp_path, "services:\n  web:\n    image: busybox\n    x-since: 2026-01-01\n")
    with pytest.raises(ComposeError, match=r"services\.web\.x-since") as refused:
        build(folder)
    assert refused.value.code == "COMPOSE_INVALID"


def test_parameter_values_stay_plain_from_desired_state_to_document(tmp_path: Path) -> None:
    """Root cause 1: a list stays a list and a mapping a dict, so the policy sees them."""
    files = deployment_files(
        {"services.web.volumes": ["/:/host"], "services.evil": {"image": "busybox"}}
    )
    (component,) = desired.parse_files(files).deployments[0].components
    assert type(component.overlays["services.web.volumes"]) is list
    folder = package(tmp_path, "services:\n  web:\n    image: busybox\n")
    document = build(folder, dict(component.overlays))
    assert document["services"]["web"]["volumes"][0]["source"] == "/"
    with pytest.raises(PolicyError) as denied:
        policy.check_compose(document, PolicyConfig(), package_dir=folder)
    assert denied.value.rule == "policy.allowed_bind_paths"


# --- one pointer grammar ---------------------------------------------------------------------


def deployment_files(parameters: dict, location: str = "https://p.example/x.tgz") -> dict:
    doc = {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {
            "name": "d", "namespace": "n", "annotations": {"id": "dep", "applicationId": "a"}
        },
        "spec": {
            "deploymentProfile": {
                "type": "docker-compose",
                "components": [{"name": "web", "properties": {"packageLocation": location}}],
            },
            "parameters": {
                f"p{i}": {"value": v, "targets": [{"pointer": k, "components": ["web"]}]}
                for i, (k, v) in enumerate(parameters.items())
            },
        },
    }  # fmt: skip
    return {"d.yaml": yaml.safe_dump(doc).encode()}


COMPOSE_WITH_VOLUME = "services:\n  web:\n    image: busybox\n    volumes: ['./data:/data']\n"


@pytest.mark.parametrize(
    ("target", "ok"),
    [("services.web.volumes.0", True), ("services.web.volumes.1", False)],
)
def test_one_pointer_grammar_for_repository_and_downloaded_packages(
    tmp_path: Path, target: str, ok: bool
) -> None:
    """Root cause 4: in the repository (checked at parse) and downloaded (applied when built)
    a list-index pointer means the same, and a relative bind resolves inside the package."""
    in_repo = deployment_files({target: "./conf:/conf"}, "app")
    in_repo["app/compose.yaml"] = COMPOSE_WITH_VOLUME.encode()
    state = desired.parse_files(in_repo)
    downloaded = desired.parse_files(deployment_files({target: "./conf:/conf"}))
    (component,) = downloaded.deployments[0].components
    folder = package(tmp_path, COMPOSE_WITH_VOLUME)
    if ok:
        assert state.deployments and not state.failures
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        old = os.getcwd()
        os.chdir(elsewhere)  # the agent's working folder must not matter
        try:
            document = build(folder, dict(component.overlays))
        finally:
            os.chdir(old)
        (mount,) = document["services"]["web"]["volumes"]
        assert mount["source"] == str(folder / "conf")
        policy.check_compose(document, PolicyConfig(), package_dir=folder)
    else:
        assert state.failures[0].error.code == "UNSUPPORTED_POINTER"
        with pytest.raises(ComposeError) as refused:
            build(folder, dict(component.overlays))
        assert refused.value.code == "UNSUPPORTED_POINTER"


@pytest.mark.parametrize(
    "bad", ["services", "name.x", "services..web", "/services/web", "services.web image", 5]
)
def test_pointer_grammar_refusals(bad) -> None:
    with pytest.raises(ComposeError) as refused:
        pointer.parse(bad)
    assert refused.value.code == "UNSUPPORTED_POINTER"


# --- one form, derived names -----------------------------------------------------------------


def test_short_and_long_syntax_fold_into_one_form(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        "services:\n  web:\n    image: busybox\n    volumes:\n"
        "      - ./d:/d:ro\n"
        "      - {type: bind, source: ./d, target: /d, read_only: true}\n"
        "      - data:/v\n      - /anon\n"
        "    ports: [8080, '127.0.0.1:81:80', {target: 53, published: 53, protocol: udp}]\n"
        "volumes: {data: {}}\n",
    )
    web = build(folder)["services"]["web"]
    short, long_, named, anonymous = web["volumes"]
    assert short == {**long_, "bind": {"create_host_path": True}}
    assert short["source"] == str(folder / "d")
    assert named == {"type": "volume", "source": "data", "target": "/v"}
    assert anonymous == {"type": "volume", "target": "/anon"}
    assert web["ports"] == ["8080", "127.0.0.1:81:80", "53:53/udp"]
    assert composedoc.short_mount(short) == f"{folder}/d:/d:ro"


def test_names_are_derived_from_the_project(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        "name: chosen\nservices:\n  web:\n    image: busybox\n    volumes: ['data:/d', 'ext:/e']\n"
        "volumes: {data: {}, ext: {external: true, name: shared-data}}\n",
    )
    document = build(folder)
    assert document["name"] == PROJECT
    assert document["networks"]["default"]["name"] == f"{PROJECT}_default"
    assert document["volumes"]["data"]["name"] == f"{PROJECT}_data"
    assert document["volumes"]["ext"] == {"external": True, "name": "shared-data"}
    with pytest.raises(PolicyError) as denied:
        policy.check_compose(document, PolicyConfig(), package_dir=folder)
    assert denied.value.rule == "policy.allowed_external_volumes"
    allowed = PolicyConfig(allowed_external_volumes=("shared-data",))
    policy.check_compose(document, allowed, package_dir=folder)
    assert "name" not in composedoc.tool_document(document)


@pytest.mark.parametrize(
    ("compose", "says"),
    [
        (
            "services:\n  web: {image: busybox}\nnetworks:\n  default: {name: ml-other_default}\n",
            "networks.default.name",
        ),
        (
            "services:\n  web: {image: busybox, volumes: ['v:/v']}\nvolumes:\n  v: {name: other}\n",
            "volumes.v.name",
        ),
        ("services:\n  web: {image: busybox, container_name: x}\n", "container_name"),
        (
            "services:\n  web: {image: busybox, volumes: ['v:/v']}\n"
            "volumes:\n  v: {external: true, name: /}\n",
            "volumes.v.name",
        ),
        (
            "services:\n  web: {image: busybox, volumes: [{type: volume, source: /etc, "
            "target: /x}]}\n",
            "services.web.volumes.0.source",
        ),
        ("services:\n  web: {image: busybox, volumes: ['undeclared:/x']}\n", "not declared"),
        ("services:\n  7: {image: busybox}\n", "not a string"),
        ("services:\n  web: {image: busybox, volumes: ['./x:/x:bogus']}\n", "not a volume option"),
        ("services:\n  web: {image: busybox, ports: ['-p 80']}\n", "services.web.ports.0"),
        ("services:\n  web: {image: busybox, extends: {file: /etc/x.yaml}}\n", "extends"),
        ("include: [/etc/x.yaml]\nservices:\n  web: {image: busybox}\n", "include"),
        ("services:\n  web: {image: busybox, network_mode: 'container:ml-x'}\n", "network_mode"),
        ("services:\n  web: {image: busybox, pid: 'container:other'}\n", "services.web.pid"),
        ("services:\n  web: {image: busybox, volumes_from: ['container:x']}\n", "volumes_from"),
        (
            "services:\n  web: {image: busybox, labels: ['io.margo.deployment=other']}\n",
            "io.margo.deployment",
        ),
    ],
)
def test_names_and_shapes_outside_the_one_form_are_refused(
    tmp_path: Path, compose: str, says: str
) -> None:
    with pytest.raises(ComposeError) as refused:
        build(package(tmp_path, compose))
    assert refused.value.code == "COMPOSE_INVALID"
    assert says in refused.value.message


# --- argv ------------------------------------------------------------------------------------


class RecordingPodman(Podman):
    """The real Podman class with only the process call recorded (nothing may run here)."""

    def __init__(self) -> None:
        super().__init__({"PATH": ""})
        self.calls: list[list[str]] = []

    def run(self, argv, *, what="", timeout=None):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.mark.parametrize("image", ["--privileged", "-v", "--volume=/:/host", "a b", ""])
def test_an_option_as_image_is_refused_before_any_engine_call(tmp_path: Path, image: str) -> None:
    engine = RecordingPodman()
    with pytest.raises(ComposeError) as refused:
        engine.ensure_image(image)
    assert refused.value.code == "IMAGE_INVALID" and engine.calls == []
    folder = package(tmp_path, f"services:\n  web:\n    image: {image!r}\n")
    with pytest.raises(ComposeError) as refused:
        build(folder)
    assert refused.value.code == "IMAGE_INVALID"


def test_builtin_argv_joins_every_value_to_its_flag(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        "services:\n  web:\n    image: busybox\n    hostname: --privileged\n"
        "    user: '-v'\n    working_dir: /w\n    environment: {A: --cap-add=ALL}\n"
        "    command: [--privileged]\n",
    )
    document = build(folder)
    engine = RecordingPodman()
    builtin.BuiltinDriver(engine).up(PROJECT, document, tmp_path / "work")
    (run,) = [c for c in engine.calls if c[0] == "run"]
    image_at = run.index("busybox")
    assert all(w.startswith("--") and "=" in w for w in run[2:image_at]), run
    assert "--hostname=--privileged" in run and "--user=-v" in run
    assert run[image_at + 1 :] == ["--privileged"]  # a command word: after the image
    network = [c for c in engine.calls if c[:2] == ["network", "create"]]
    assert network and network[0][-1] == f"{PROJECT}_default"


def test_a_unit_carries_the_document_and_its_digest(tmp_path: Path) -> None:
    folder = package(tmp_path, "services:\n  web:\n    image: busybox\n")
    one = ComponentUnit.from_package("dep", "web", folder, {}, {}, "c1", device=DEVICE)
    two = ComponentUnit.from_package(
        "dep", "web", folder, {}, {"services.web.user": "1"}, "c1", device=DEVICE
    )
    assert one.document["name"] == PROJECT and one.digest != two.digest
    assert (
        one.digest
        == ComponentUnit.from_package("dep", "web", folder, {}, {}, "c1", device=DEVICE).digest
    )


# --- what self-heal verifies -----------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path):
    store = PackageStore(PackagesConfig(), tmp_path / "cache")  # an in-repository package
    files = {"app/compose.yaml": b"services:\n  web:\n    image: busybox\n", "app/conf": b"x"}
    return store, store.prepare("app", None, files), files


def test_a_package_whose_shipped_files_changed_is_tampered(prepared) -> None:
    store, package, _ = prepared
    assert store.verify(package.digest).path == package.path
    (package.path / "data.db").write_bytes(b"the application's own data")  # added: fine
    store.verify(package.digest)
    with open(package.compose_file, "a") as f:
        f.write("    privileged: true\n")
    with pytest.raises(PackageTransientError) as refused:
        store.verify(package.digest)
    assert refused.value.code == "PACKAGE_TAMPERED"
    assert "compose.yaml" in refused.value.message


def test_a_shipped_file_removed_is_tampered_and_prepare_builds_afresh(prepared) -> None:
    store, package, files = prepared
    (package.path / "conf").unlink()
    with pytest.raises(PackageTransientError) as refused:
        store.verify(package.digest)
    assert refused.value.code == "PACKAGE_TAMPERED"
    again = store.prepare("app", None, files)  # from its source: a whole package again
    assert again.digest == package.digest and (again.path / "conf").read_bytes() == b"x"
    store.verify(again.digest)


def test_nothing_here_raises_anything_but_coded_errors(tmp_path: Path) -> None:
    folder = package(tmp_path, "services: [web]\n")
    with pytest.raises(MargoLiteError):
        build(folder)


def test_the_recorded_document_renders_the_argv_it_was_installed_with(tmp_path: Path) -> None:
    """Self-heal starts the document from its record (JSON, keys sorted): the same argv, so
    the same config hash, as at install (else every restoration would recreate)."""
    folder = package(
        tmp_path,
        "services:\n  web:\n    image: busybox\n    labels: {z: 1, a: 2}\n"
        "    environment: {ZED: 1, ALPHA: 2}\n    volumes: [./d:/d]\n",
    )
    document = build(folder)
    recorded = json.loads(json.dumps(document, sort_keys=True))
    render = builtin.BuiltinDriver.run_argv
    assert render(None, PROJECT, recorded, "web") == render(None, PROJECT, document, "web")  # type: ignore[arg-type]
    assert list(recorded) == list(document)


def test_an_external_object_is_denied_even_when_no_service_uses_it(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        "services:\n  web:\n    image: busybox\n"
        "volumes: {data: {external: true}}\nnetworks: {other: {external: true, name: ml-x}}\n",
    )
    found = policy.violations(build(folder), PolicyConfig(), package_dir=folder)
    assert {(v.service, v.rule) for v in found} == {
        ("", "policy.allowed_external_volumes"),
        ("", "policy.allowed_external_networks"),
    }
    allowed = PolicyConfig(allowed_external_volumes=("data",), allowed_external_networks=("ml-x",))
    policy.check_compose(build(folder), allowed, package_dir=folder)


def test_a_command_whose_quotes_do_not_pair_up_is_refused(tmp_path: Path) -> None:
    """Found by the property test (Debian's hypothesis): shlex raised a bare ValueError."""
    folder = package(tmp_path, "services:\n  web:\n    image: busybox\n    command: \"a '''b\"\n")
    with pytest.raises(ComposeError, match=r"services\.web\.command") as refused:
        build(folder)
    assert refused.value.code == "COMPOSE_INVALID"
