"""The whole compose path under generated hostile input: desired state and package in, argv out.

From generated packages (compose files) and deployments (parameters of every shape: lists,
mappings, dates, numbers, strings starting with `-`, `..`, `/`, very long ones), through
`desired.parse_files`, `composedoc.build` and the policy gate, to what each driver renders
on each engine, recorded instead of run (a recording engine: the real `Engine`/driver
classes with only the process call replaced, since no real engine may receive hostile
argv here; the real-engine attacks are in tests/test_attacks_agent.py). Whatever is not
refused with a coded error must hold the invariants:

- no host path outside `policy.allowed_bind_paths` and the package folder;
- no privilege the policy does not allow;
- no user value in an option position: every engine word before the image is a
  `--flag=value` of a known flag, and the image is a valid reference;
- no network, volume or container name outside the project's namespace.

Derandomized (a fixed seed) so that a failure reproduces: 200 examples in the quick suite,
2000 in the slow one (MARGO_LITE_PROPERTY_EXAMPLES overrides both).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from margo_lite import composedoc, desired, imageref, policy
from margo_lite.backends import builtin, project
from margo_lite.backends.compose import DockerComposeV1, PodmanCompose
from margo_lite.backends.engine import Docker, Podman
from margo_lite.config import PolicyConfig
from margo_lite.constants import COMPOSE_FILE
from margo_lite.errors import MargoLiteError

ALLOWED = "/srv/allowed"
POLICY = PolicyConfig(allowed_bind_paths=(ALLOWED,))
DEPLOYMENT = "dep-prop"
COMPONENT = "app"
DEVICE = "gw-props"
PROJECT = project.project_name(DEPLOYMENT, COMPONENT, device=DEVICE)
#: The only flags the built-in driver may give `run`, each joined to its value.
RUN_FLAGS = {
    "--name", "--network", "--network-alias", "--label", "--env", "--publish", "--volume",
    "--restart", "--workdir", "--user", "--hostname", "--stop-signal", "--stop-timeout",
    "--health-cmd", "--health-interval", "--health-timeout", "--health-start-period",
    "--health-retries", "--entrypoint",
}  # fmt: skip

# --- generated input ---------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from(
    [
        "-v", "--privileged", "--volume=/:/host", "-", "..", "../..", "/", "/etc", "/etc/shadow",
        "./data", ".", "~", "~/x", "/srv/allowed/x", "/srv/allowed/../../etc", "data", "x" * 300,
        "a b", "$HOME", "${X:-/}", ":", "::", "ml-other-1234567890_default", "host", "true",
        "busybox:1", "localhost/img:1", "docker.io/library/busybox@sha256:" + "a" * 64,
    ]
)  # fmt: skip
TEXT = st.one_of(HOSTILE_TEXT, st.text(max_size=40), st.text(min_size=300, max_size=600))
SCALAR = st.one_of(
    TEXT,
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2100, 1, 1)),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(TEXT, st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Valid nine times in ten: each example then reaches the renderers with a few hostile
    values, instead of being refused for the first of many."""
    return st.one_of(*[valid] * 9, hostile)


MOUNT_TEXT = st.builds(
    lambda s, t, o: f"{s}:{t}{o}",
    HOSTILE_TEXT,
    mostly(st.sampled_from(["/data", "/host"]), st.sampled_from(["data", "-x"])),
    mostly(st.sampled_from(["", ":ro", ":rw,z"]), st.just(":bogus")),
)
MOUNT = st.one_of(
    MOUNT_TEXT,
    HOSTILE_TEXT,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["bind", "volume", "tmpfs", "npipe"]), "target": st.just("/t")},
        optional={"source": HOSTILE_TEXT, "read_only": st.booleans(), "bind": VALUE},
    ),
)
SERVICE = st.fixed_dictionaries(
    {"image": mostly(st.sampled_from(["localhost/testimg:1", "busybox"]), HOSTILE_TEXT)},
    optional={
        "volumes": st.lists(MOUNT, max_size=3),
        "ports": st.lists(
            mostly(st.sampled_from(["8080", "127.0.0.1:8080:80", "53/udp"]), VALUE), max_size=2
        ),
        "environment": st.dictionaries(st.sampled_from(["A", "B"]), SCALAR, max_size=2),
        "command": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
        "privileged": st.one_of(st.booleans(), HOSTILE_TEXT),
        "network_mode": HOSTILE_TEXT,
        "hostname": HOSTILE_TEXT,
        "user": HOSTILE_TEXT,
        "working_dir": HOSTILE_TEXT,
        "labels": st.dictionaries(st.sampled_from(["a", project.DEPLOYMENT]), TEXT, max_size=2),
        "security_opt": st.lists(HOSTILE_TEXT, max_size=1),
        "cap_add": st.lists(st.sampled_from(["SYS_ADMIN", "ALL"]), max_size=1),
    },
)
OBJECT = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={"name": HOSTILE_TEXT, "external": st.one_of(st.booleans(), VALUE)},
    ),
)
COMPOSE = st.fixed_dictionaries(
    {
        "services": st.dictionaries(
            st.sampled_from(["web"] * 6 + ["db"] * 3 + ["-x"]), SERVICE, min_size=1, max_size=2
        )
    },
    optional={
        "volumes": st.dictionaries(st.sampled_from(["data"] * 8 + ["/etc"]), OBJECT, max_size=2),
        "networks": st.dictionaries(st.sampled_from(["default", "back"]), OBJECT, max_size=2),
        "name": HOSTILE_TEXT,
    },
)
POINTER = st.one_of(
    st.sampled_from(
        [
            "services.web.image", "services.web.volumes", "services.web.volumes.0",
            "services.web.privileged", "services.web", "services.evil", "networks.default.name",
            "volumes.data", "volumes.data.name", "services.web.ports.0", "services.web.command",
            "services.web.environment.A", "ENV.A", "ENV.TAG", "x-extra.a",
        ]
    ),
    st.just("services.web.volumes"),
    st.just("services.web.volumes.0"),
    st.text(alphabet="abcdefxyz.-_0123456789", min_size=1, max_size=30),
)  # fmt: skip
PARAMETERS = st.dictionaries(
    st.sampled_from(["p", "q", "r"]), st.tuples(POINTER, VALUE), max_size=3
)


def deployment(parameters: dict[str, tuple[str, Any]], package: str) -> dict:
    return {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {
            "name": "prop",
            "namespace": "ns",
            "annotations": {"id": DEPLOYMENT, "applicationId": "prop"},
        },
        "spec": {
            "deploymentProfile": {
                "type": "docker-compose",
                "components": [{"name": COMPONENT, "properties": {"packageLocation": package}}],
            },
            "parameters": {
                name: {"value": value, "targets": [{"pointer": ptr, "components": [COMPONENT]}]}
                for name, (ptr, value) in parameters.items()
            },
        },
    }


# --- recording, never running ------------------------------------------------------------------


def recording(engine_class: type) -> Any:
    class Recording(engine_class):
        def __init__(self) -> None:
            super().__init__({"PATH": ""})
            self.calls: list[list[str]] = []

        def run(self, argv, *, what="", timeout=None):  # the one process call, recorded
            self.calls.append(list(argv))
            return subprocess.CompletedProcess([self.program, *argv], 0, "", "")

    return Recording()


def recording_tool(driver_class: type, engine: Any) -> Any:
    class Recording(driver_class):
        def __init__(self) -> None:
            super().__init__(engine)
            self.calls: list[tuple[list[str], str]] = []

        def _run(self, argv, *, what, cwd, timeout=None):
            self.calls.append((list(argv), (cwd / COMPOSE_FILE).read_text()))
            return subprocess.CompletedProcess(argv, 0, "", "")

    return Recording()


# --- the invariants ----------------------------------------------------------------------------


def host_path_allowed(path: str, package_dir: Path) -> bool:
    return any(
        path == base or path.startswith(base + "/") for base in (ALLOWED, str(package_dir))
    ) and ".." not in path.split("/")


def check_builtin_argv(calls: list[list[str]], document: dict, package_dir: Path) -> None:
    images = {s["image"] for s in document["services"].values()}
    for argv in calls:
        if argv[:2] in (["network", "create"], ["volume", "create"]):
            assert all(a.startswith("--label=") for a in argv[2:-1]), argv
            assert argv[-1].startswith(PROJECT + "_"), argv
        elif argv[:2] == ["run", "-d"]:
            image_at = next(i for i, a in enumerate(argv[2:], 2) if not a.startswith("--"))
            assert argv[image_at] in images and imageref.valid(argv[image_at]), argv
            for word in argv[2:image_at]:
                flag, sep, value = word.partition("=")
                assert (sep and flag in RUN_FLAGS) or word == "--no-healthcheck", word
                if flag == "--volume" and ":" in value:  # else an anonymous volume's target
                    source = value.split(":", 1)[0]
                    if source.startswith("/"):
                        assert host_path_allowed(source, package_dir), word
                    else:
                        assert source.startswith(PROJECT + "_"), word
                if flag in ("--network", "--name"):
                    assert value.startswith(PROJECT), word
        elif argv[:2] in (["image", "inspect"], ["pull"]):
            assert imageref.valid(argv[-1]), argv


def check_tool_file(text: str, package_dir: Path) -> None:
    document = yaml.safe_load(text)
    assert "name" not in document  # the project name comes from -p
    for key in ("networks", "volumes"):
        for definition in (document.get(key) or {}).values():
            assert definition["name"].startswith(PROJECT + "_") or definition.get("external")
            assert not definition.get("external")  # the policy allows none here
    for service in document["services"].values():
        assert imageref.valid(service.get("image", "localhost/none:1"))
        assert not service.get("privileged")
        assert "container_name" not in service
        for key in ("network_mode", "pid", "ipc", "userns_mode"):
            assert str(service.get(key, "")).lower() != "host"
        assert not service.get("cap_add") and not service.get("devices")
        assert not service.get("security_opt")
        for mount in service.get("volumes") or []:
            if isinstance(mount, str):
                source = mount.split(":", 1)[0] if ":" in mount else ""
                kind = "bind" if source.startswith("/") else "volume"
            else:
                source, kind = mount.get("source", ""), mount["type"]
            if kind == "bind":
                assert host_path_allowed(source, package_dir), mount
            elif source:
                assert source in (document.get("volumes") or {}), mount


# --- the property ------------------------------------------------------------------------------

PACKAGE_DIR = Path(tempfile.mkdtemp(prefix="margo-prop-")).resolve()


def compose_path_settings(examples: int) -> settings:
    return settings(
        max_examples=int(os.environ.get("MARGO_LITE_PROPERTY_EXAMPLES", examples)),
        derandomize=True,  # a fixed seed: a failure reproduces
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@compose_path_settings(200)
@given(compose=COMPOSE, parameters=PARAMETERS, in_repo=st.booleans())
def test_every_rendered_argv_holds_the_invariants(
    compose: dict, parameters: dict, in_repo: bool
) -> None:
    """The quick run; the slow one below runs thousands of examples."""
    compose_path_holds_the_invariants(compose, parameters, in_repo)


@pytest.mark.slow
@compose_path_settings(2000)
@given(compose=COMPOSE, parameters=PARAMETERS, in_repo=st.booleans())
def test_every_rendered_argv_holds_the_invariants_thousands(
    compose: dict, parameters: dict, in_repo: bool
) -> None:
    compose_path_holds_the_invariants(compose, parameters, in_repo)


def compose_path_holds_the_invariants(compose: dict, parameters: dict, in_repo: bool) -> None:
    compose_text = yaml.safe_dump(compose, sort_keys=False)
    (PACKAGE_DIR / "compose.yaml").write_text(compose_text)
    location = "pkg" if in_repo else "https://packages.example/pkg.tar.gz"
    try:
        text = yaml.safe_dump(deployment(parameters, location))
    except yaml.YAMLError:
        return
    files = {"d.yaml": text.encode(), "pkg/compose.yaml": compose_text.encode()}
    state = desired.parse_files(files)
    if not state.deployments:
        assert state.failures and all(f.error.code for f in state.failures)
        event(f"desired state refused: {state.failures[0].error.code}")
        return
    component = state.deployments[0].components[0]
    try:
        document = composedoc.build(
            PACKAGE_DIR,
            component.env,
            component.overlays,
            deployment_id=DEPLOYMENT,
            component=COMPONENT,
            device=DEVICE,
        )
        policy.check_compose(document, POLICY, package_dir=PACKAGE_DIR)
    except MargoLiteError as refused:
        assert refused.code != "INTERNAL_ERROR"
        event(f"package refused: {refused.code} {refused.message.split(':')[0][:40]}")
        return
    event("rendered")
    assert composedoc.plain(document) == document
    for engine_class in (Podman, Docker):
        engine = recording(engine_class)
        driver = builtin.BuiltinDriver(engine)
        try:
            driver.check(document)
        except MargoLiteError as refused:  # the built-in driver's subset
            assert refused.code in ("COMPOSE_UNSUPPORTED_KEY", "COMPOSE_INVALID")
        else:
            for image in {s["image"] for s in document["services"].values()}:
                engine.ensure_image(image)
            driver.up(PROJECT, document, PACKAGE_DIR / "work")
            check_builtin_argv(engine.calls, document, PACKAGE_DIR)
        tool_class = PodmanCompose if engine_class is Podman else DockerComposeV1
        tool = recording_tool(tool_class, engine)
        tool.up(PROJECT, document, PACKAGE_DIR / "work")
        ((argv, written),) = tool.calls
        assert all(
            PROJECT in a or a.startswith("-") or "/" in a or a in ("up", "false") for a in argv
        )
        rendered = project.dump(composedoc.tool_document(document)).decode()
        assert yaml.safe_load(written) == yaml.safe_load(rendered)
        check_tool_file(written, PACKAGE_DIR)


@pytest.mark.parametrize(
    "image",
    ["--privileged", "-v", "", "a b", "UPPER", "x" * 600, "busybox\n--privileged"],
)
def test_hostile_image_references_are_refused(image: str) -> None:
    assert not imageref.valid(image)


@pytest.mark.parametrize(
    "image",
    ["busybox", "busybox:1.36", "localhost/testimg:1", "localhost:5000/a/b:c",
     "docker.io/library/busybox@sha256:" + "a" * 64, "[::1]:5000/x:y"],
)  # fmt: skip
def test_good_image_references_pass(image: str) -> None:
    assert imageref.valid(image)
