"""The pure parts of the backends: loading a compose project, names, labels, the built-in
driver's translation and refusals, and how engine messages are classified."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from margo_lite import composedoc
from margo_lite.backends import (
    ComponentHealth,
    ServiceHealth,
    builtin,
    load_project,
    project,
    project_name,
)
from margo_lite.backends.runner import classify, engine_error, on_path
from margo_lite.errors import ComposeError, EngineTransientError


def package(tmp_path: Path, compose: str, **files: str) -> Path:
    folder = tmp_path / "pkg"
    folder.mkdir(exist_ok=True)
    (folder / "docker-compose.yml").write_text(textwrap.dedent(compose))
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def test_interpolation_parameters_win_over_dotenv(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        """\
        services:
          web:
            image: "img:${TAG:-latest}"
            environment:
              A: "$SITE"
              B: "${UNSET-dflt}/${EMPTY:-empty}/${EMPTY-kept}"
              C: "$$literal"
              D: "${SITE:+has-site}"
        """,
        __env="SITE=from-dotenv\nEMPTY=\n# comment\nTAG='1.2'\n",
    )
    doc = load_project(pkg, {"SITE": "SID-123"}, {})
    web = doc["services"]["web"]
    assert web["image"] == "img:1.2"
    assert web["environment"] == {
        "A": "SID-123",
        "B": "dflt/empty/",
        "C": "$literal",
        "D": "has-site",
    }


def test_required_variable_and_bad_syntax_are_coded_errors(tmp_path: Path) -> None:
    pkg = package(tmp_path, "services:\n  web:\n    image: ${IMAGE:?set IMAGE}\n")
    with pytest.raises(ComposeError, match="IMAGE is missing: set IMAGE"):
        load_project(pkg, {}, {})
    assert load_project(pkg, {"IMAGE": "x"}, {})["services"]["web"]["image"] == "x"
    pkg = package(tmp_path, "services:\n  web:\n    image: ${1BAD}\n")
    with pytest.raises(ComposeError, match="invalid interpolation"):
        load_project(pkg, {}, {})


def test_env_files_inlined_environment_wins_and_stays_inside(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        """\
        services:
          web:
            image: img
            env_file: [common.env, {path: optional.env, required: false}]
            environment: [A=2, FROM_PARAM]
            volumes: ["./conf:/conf:ro", "data:/data", "/abs:/abs"]
        volumes: {data: {}}
        """,
        common__env="A=1\nB=two words\n",
    )
    doc = load_project(pkg, {"FROM_PARAM": "p"}, {})
    web = doc["services"]["web"]
    assert web["environment"] == {"A": "2", "B": "two words", "FROM_PARAM": "p"}
    assert "env_file" not in web
    assert [composedoc.short_mount(v) for v in web["volumes"]] == [
        f"{pkg.resolve()}/conf:/conf:ro",
        "data:/data",
        "/abs:/abs",
    ]

    pkg = package(tmp_path, "services:\n  web:\n    image: i\n    env_file: ../../etc/passwd\n")
    with pytest.raises(ComposeError, match="outside the package"):
        load_project(pkg, {}, {})


def test_overlays_set_dotted_pointers(tmp_path: Path) -> None:
    pkg = package(tmp_path, "services:\n  web:\n    image: i\n    ports: ['80']\n")
    doc = load_project(
        pkg,
        {},
        {"services.web.environment.LEVEL": "debug", "services.web.ports.0": "8080:80"},
    )
    assert doc["services"]["web"]["environment"] == {"LEVEL": "debug"}
    assert doc["services"]["web"]["ports"] == ["8080:80"]
    with pytest.raises(ComposeError, match="not a mapping"):
        load_project(pkg, {}, {"services.web.image.x": 1})


@pytest.mark.parametrize(
    ("compose", "message"),
    [
        ("services: []\n", "'services' mapping"),
        ("services:\n  a: {image: i, depends_on: [b]}\n", "unknown service 'b'"),
        (
            "services:\n  a: {image: i, depends_on: [b]}\n  b: {image: i, depends_on: [a]}\n",
            "cycle a -> b -> a",
        ),
        ("services: {a: {image: i}}\nservices: {}\n", "duplicate key"),
    ],
)
def test_bad_projects(tmp_path: Path, compose: str, message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        load_project(package(tmp_path, compose), {}, {})


def test_no_compose_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no compose file"):
        load_project(tmp_path, {}, {})


def test_dependency_order() -> None:
    doc = {
        "services": {
            "web": {"depends_on": {"db": {"condition": "service_healthy"}, "cache": None}},
            "db": {},
            "cache": {"depends_on": ["db"]},
        }
    }
    assert project.service_order(doc) == ["db", "cache", "web"]


@pytest.mark.parametrize(
    ("deployment", "component"),
    [
        ("ad9b614e-8912-45f4-a523-372358765def", "digitron-orchestrator-docker"),
        ("ÄÖ/../ x" * 50, "C:\\weird name"),
        ("", "-"),
    ],
)
def test_project_names_are_safe_and_distinct(deployment: str, component: str) -> None:
    name = project_name(deployment, component, device="gw-1")
    assert len(name) <= 45
    assert name == name.lower() and name[0].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert name != project_name(deployment + "x", component, device="gw-1")
    assert name != project_name(deployment, component + "x", device="gw-1")
    # two devices served from one host never share a project (nor its containers' names)
    assert name != project_name(deployment, component, device="gw-2")
    assert name == project_name(deployment, component, device="gw-1")  # stable
    assert name != project.legacy_project_name(deployment, component)


def test_ownership_labels_everywhere_except_external() -> None:
    doc = {
        "services": {"web": {"image": "i", "labels": {"mine": "1"}}},
        "volumes": {"data": None, "shared": {"external": True}},
    }
    owned = project.with_ownership(doc, "dep", "comp", device="gw")
    labels = project.ownership_labels("dep", "comp", device="gw")
    assert owned["services"]["web"]["labels"] == {"mine": "1", **labels, project.SERVICE: "web"}
    assert owned["networks"]["default"]["labels"] == labels
    assert owned["volumes"]["data"]["labels"] == labels
    assert owned["volumes"]["shared"] == {"external": True}
    assert "labels" not in doc["services"]["web"] or doc["services"]["web"]["labels"] == {
        "mine": "1"
    }


def test_a_document_cannot_claim_another_devices_ownership() -> None:
    claimed = {
        project.DEVICE: "gw-victim",
        project.DEPLOYMENT: "theirs",
        project.COMPONENT: "theirs",
        project.MANAGED_BY: "someone",
    }
    doc = {
        "services": {"web": {"image": "i", "labels": dict(claimed)}},
        "networks": {"default": {"labels": dict(claimed)}},
        "volumes": {"data": {"labels": [f"{k}={v}" for k, v in claimed.items()]}},
    }
    owned = project.with_ownership(doc, "dep", "comp", device="gw-mine")
    mine = project.ownership_labels("dep", "comp", device="gw-mine")
    assert mine[project.DEVICE] == "gw-mine"
    for labels in (
        owned["services"]["web"]["labels"],
        owned["networks"]["default"]["labels"],
        owned["volumes"]["data"]["labels"],
    ):
        assert {k: labels[k] for k in mine} == mine


def test_dump_escapes_dollars_for_external_tools() -> None:
    doc = {"services": {"web": {"image": "i", "command": "echo $HOME"}}}
    assert yaml.safe_load(project.dump(doc))["services"]["web"]["command"] == "echo $$HOME"


# --- the built-in driver ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "key"),
    [
        ({"image": "i", "privileged": True}, "services.web.privileged"),
        ({"image": "i", "networks": ["front"]}, "services.web.networks"),
        ({"image": "i", "healthcheck": {"test": "true", "foo": 1}}, "services.web.healthcheck.foo"),
        ({"image": "i", "build": "."}, "services.web.build"),
        (
            {"image": "i", "volumes": [{"type": "tmpfs", "target": "/t"}]},
            "services.web.volumes.type",
        ),
    ],
)
def test_builtin_refuses_unsupported_keys_by_name(service: dict, key: str) -> None:
    doc = project.with_ownership({"services": {"web": service}}, "d", "c", device="gw")
    with pytest.raises(ComposeError) as refused:
        builtin.check_supported(doc)
    assert refused.value.code == "COMPOSE_UNSUPPORTED_KEY"
    assert key in refused.value.message


def test_builtin_refuses_unsupported_top_level_keys() -> None:
    doc = project.with_ownership(
        {"services": {"web": {"image": "i"}}, "secrets": {}}, "d", "c", device="gw"
    )
    with pytest.raises(ComposeError, match="secrets: not supported"):
        builtin.check_supported(doc)
    doc = project.with_ownership(
        {"services": {"web": {"image": "i"}}, "networks": {"back": {}}}, "d", "c", device="gw"
    )
    with pytest.raises(ComposeError, match=r"networks\.back: not supported"):
        builtin.check_supported(doc)


def test_builtin_run_arguments() -> None:
    doc = canonical(
        {
            "services": {
                "web": {
                    "image": "img:1",
                    "entrypoint": ["/bin/sh", "-c"],
                    "command": "echo hi",
                    "environment": {"A": "1"},
                    "ports": [
                        "127.0.0.1:8080:80",
                        {"target": 53, "published": 53, "protocol": "udp"},
                    ],
                    "volumes": [
                        "data:/data",
                        "/srv:/srv:ro",
                        {"type": "volume", "source": "data", "target": "/d2"},
                    ],
                    "restart": "unless-stopped",
                    "stop_grace_period": "1m30s",
                    "healthcheck": {
                        "test": ["CMD", "wget", "-q", "http://x/"],
                        "interval": "5s",
                        "retries": 2,
                    },
                }
            },
            "volumes": {"data": {}},
        },
    )
    builtin.check_supported(doc)
    argv = builtin.BuiltinDriver.run_argv(None, "proj", doc, "web")  # type: ignore[arg-type]
    assert argv[:3] == ["--name=proj-web-1", "--network=proj_default", "--network-alias=web"]
    for part in (
        "--env=A=1",
        "--publish=127.0.0.1:8080:80",
        "--publish=53:53/udp",
        "--volume=proj_data:/data",
        "--volume=/srv:/srv:ro",
        "--volume=proj_data:/d2",
        "--restart=unless-stopped",
        "--stop-timeout=90",
        "--health-cmd=wget -q http://x/",
        "--health-interval=5s",
        "--health-retries=2",
        f"--label={project.MANAGED_BY}=margo-lite",
        "--entrypoint=/bin/sh",
    ):
        assert part in argv, part
    assert argv[argv.index("img:1") :] == ["img:1", "-c", "echo", "hi"]
    assert all(a.startswith("--") and "=" in a for a in argv[: argv.index("img:1")])


def test_undeclared_named_volume_is_an_error() -> None:
    with pytest.raises(ComposeError, match="volume 'x' is not declared"):
        canonical({"services": {"web": {"image": "i", "volumes": ["x:/x"]}}})


def canonical(doc: dict) -> dict:
    """The canonical document of `doc` as project `proj` (package folder /pkg)."""
    normal = composedoc.normalize(doc, Path("/pkg"), {})
    return project.with_ownership(composedoc.name_objects(normal, "proj"), "d", "c", device="gw")


# --- engine messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "code"),
    [
        (
            "Error: cannot listen on the TCP port: listen tcp4 :80: bind: address already in use",
            "PORT_IN_USE",
        ),
        ("Bind for 0.0.0.0:80 failed: port is already allocated", "PORT_IN_USE"),
        (
            'Error: creating container storage: the container name "web" is already in use by '
            "abc. You have to remove that container",
            "NAME_CONFLICT",
        ),
        (
            'Conflict. The container name "/web" is already in use by container "abc"',
            "NAME_CONFLICT",
        ),
        (
            "Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?",
            "ENGINE_UNAVAILABLE",
        ),
        ("Error: localhost/x:1: image not known", "IMAGE_MISSING"),
        ("Error response from daemon: No such image: x:1", "IMAGE_MISSING"),
        ("Error: something else", "ENGINE_FAILED"),
    ],
)
def test_engine_messages_are_classified(stderr: str, code: str) -> None:
    assert classify(stderr) == code


def test_unreachable_engine_is_transient_and_keeps_its_message() -> None:
    error = engine_error("docker ps", ["docker", "ps"], 1, "Cannot connect to the Docker daemon")
    assert isinstance(error, EngineTransientError)
    assert error.code == "ENGINE_UNAVAILABLE"
    assert "Cannot connect" in error.message


def test_errors_never_keep_environment_values() -> None:
    argv = ["podman", "run", "--env", "TOKEN=s3cret", "-e", "A=1", "img"]
    error = engine_error("run", argv, 125, "x")
    assert "s3cret" not in " ".join(error.argv)
    assert error.argv[:5] == ("podman", "run", "--env", "TOKEN=***", "-e")


def test_component_health() -> None:
    assert not ComponentHealth().ok
    health = ComponentHealth({"a": ServiceHealth("running"), "job": ServiceHealth("exited", 0)})
    assert health.ok and health.problems() == []
    health = ComponentHealth({"a": ServiceHealth("exited", 3), "b": ServiceHealth("missing")})
    assert health.problems() == ["a: exited (exit code 3)", "b: missing"]


def test_the_engine_lookup_finds_what_shutil_which_finds(tmp_path: Path) -> None:
    """`runtime.engine: auto` looks for podman and docker as `shutil.which` would: an
    executable file on the PATH given (or the default one), a path as it is, never a folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "tool").write_text("#!/bin/sh\n")
    (first / "tool").chmod(0o644)  # not executable: the one in `second` counts
    (second / "tool").chmod(0o755)
    (first / "folder").mkdir()
    search = os.pathsep.join([str(first), str(second)])
    cases = [
        ("tool", search),
        ("tool", str(first)),
        ("folder", search),
        ("missing", search),
        ("tool", ""),
        (str(second / "tool"), ""),
        (str(first / "tool"), search),
        ("sh", None),  # no PATH: the default one
    ]
    for program, path in cases:
        environ = {} if path is None else {"PATH": path}
        expected = shutil.which(program, path=os.defpath if path is None else path)
        assert on_path(program, environ) is (expected is not None), (program, path)
