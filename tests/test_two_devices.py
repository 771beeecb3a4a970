"""Ownership per device: two agents (two device ids, two state dirs, two Git repositories,
two WOS simulators) share ONE engine store, podman's and then a private dockerd's, and both
run a deployment with the same id. Neither may touch the other's containers, networks or
volumes through install, update, restart, removal, and the orphan sweep after a restart.

One device uses the built-in compose driver, the other the engine's compose tool when it
is installed (podman-compose 1.6+, docker-compose), so both kinds of driver are crossed.
What is checked is what a user checks: each app answers on its port, and the other
device's containers (same ids, running), networks and volumes are all still there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite.backends import DockerComposeV1, PodmanCompose
from margo_lite.backends.engine import Docker, Podman
from margo_lite.devkit import wossim
from tests.support.engines import IMAGE, free_port, http_get
from tests.support.rig import Rig, deployment, wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]

DEP = "web-1"  # the same deployment id on both devices

APP = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo \\"$$GREETING\\" > /data/index.html;
      exec httpd -f -p 8080 -h /data"]
    environment:
      GREETING: "${{GREETING:-hello}}"
    ports: ["127.0.0.1:${{PORT}}:8080"]
    volumes: ["data:/data"]
    stop_grace_period: 1s
volumes:
  data: {{}}
"""


def files(port: int, greeting: str) -> dict[str, str]:
    return {
        "apps/web/compose.yaml": APP.format(image=IMAGE),
        f"{DEP}.yaml": deployment(DEP, greeting=greeting, port=port),
    }


def compose_tool(engine: str, environ: dict[str, str]) -> str:
    """The engine's compose tool when it runs here, else the built-in driver."""
    if engine == "podman":
        tool: PodmanCompose | DockerComposeV1 = PodmanCompose(Podman(environ))
    else:
        tool = DockerComposeV1(Docker(environ))
    return tool.name if tool.available() else "builtin"


def objects(rig: Rig) -> dict[str, object]:
    """A device's containers (id -> state), networks and volumes, by its device label, as
    the engine's own command line lists them (`Rig.containers` for the containers)."""
    label = f"label=io.margo.device={rig.device}"

    def listing(*argv: str) -> list[str]:
        out = subprocess.run(
            [rig.engine, *argv[:-1], "--filter", label, "--format", argv[-1]],
            capture_output=True,
            text=True,
            env=rig.environ,
            timeout=60,
            check=True,
        ).stdout
        return out.split("\n")

    return {
        "containers": {c["Id"]: c["State"] for c in rig.containers()},
        "networks": {n for n in listing("network", "ls", "{{.Name}}") if n},
        "volumes": {v for v in listing("volume", "ls", "{{.Name}}") if v},
    }


def names(rig: Rig) -> set[str]:
    return {c["Names"][0] for c in rig.containers()}


def serves(rig: Rig, port: int, greeting: str) -> None:
    wait_for(
        lambda: (http_get(port) or "").strip() == greeting,
        timeout=120,
        what=f"{rig.device} serving {greeting!r}",
    )


def untouched(rig: Rig, before: dict[str, object], port: int, greeting: str) -> None:
    """The device's objects are exactly as they were, its container runs and answers."""
    assert objects(rig) == before, rig.device
    assert set(before["containers"].values()) == {"running"}  # type: ignore[union-attr]
    assert (http_get(port) or "").strip() == greeting


def restart_with(rig: Rig, change: dict[str, str | None]) -> None:
    """Stop the agent, change the desired state meanwhile, start it again."""
    assert rig.stop() == 0
    rig.upstream.commit(change)
    rig.start()


def two_devices(a: Rig, b: Rig) -> None:
    pa, pb = free_port(), free_port()

    # both install the same deployment id at once; their names never meet
    a.upstream.commit(files(pa, "a-1"))
    b.upstream.commit(files(pb, "b-1"))
    a.start()
    b.start()
    wait_state(a, DEP, "Installed")
    wait_state(b, DEP, "Installed")
    serves(a, pa, "a-1")
    serves(b, pb, "b-1")
    oa, ob = objects(a), objects(b)
    for kind in ("containers", "networks", "volumes"):
        assert len(oa[kind]) == 1 and len(ob[kind]) == 1, (kind, oa, ob)  # type: ignore[arg-type]
    assert not names(a) & names(b)
    assert not oa["networks"] & ob["networks"]  # type: ignore[operator]
    assert not oa["volumes"] & ob["volumes"]  # type: ignore[operator]
    both = {c["Labels"].get("io.margo.device") for c in a.containers(every_device=True)}
    assert {a.device, b.device} <= both

    # A: an update, then a restart that finds another update waiting
    a.upstream.commit({f"{DEP}.yaml": deployment(DEP, greeting="a-2", port=pa)})
    serves(a, pa, "a-2")
    wait_state(a, DEP, "Installed")
    untouched(b, ob, pb, "b-1")
    restart_with(a, {f"{DEP}.yaml": deployment(DEP, greeting="a-3", port=pa)})
    serves(a, pa, "a-3")
    wait_state(a, DEP, "Installed")
    untouched(b, ob, pb, "b-1")

    # A: the deployment is removed; its volume stays, as always without purge_volumes
    volumes_a = objects(a)["volumes"]
    a.upstream.commit({f"{DEP}.yaml": None})
    wait_state(a, DEP, "Removed")
    assert objects(a) == {"containers": {}, "networks": set(), "volumes": volumes_a}
    assert http_get(pa) is None
    untouched(b, ob, pb, "b-1")

    # A: installed again, then its state forgets it while the WOS removes it (a state dir
    # restored from an older copy): the orphan sweep after the restart removes A's
    # leftovers by A's device label, and B's same-id deployment keeps running
    a.upstream.commit({f"{DEP}.yaml": deployment(DEP, greeting="a-4", port=pa)})
    serves(a, pa, "a-4")
    wait_state(a, DEP, "Installed")
    assert a.stop() == 0
    for record in (a.tmp / "state" / "deployments").glob(f"{DEP}.json*"):
        record.unlink()
    a.upstream.commit({f"{DEP}.yaml": None})
    a.start()
    wait_for(
        lambda: not objects(a)["containers"] and not objects(a)["networks"],
        timeout=120,
        what="A's leftovers swept",
    )
    assert f"removing leftover {DEP}/web that no record accounts for" in a.log_text()
    untouched(b, ob, pb, "b-1")

    # A runs its deployment again; now B updates, restarts and removes, and A stays
    a.upstream.commit({f"{DEP}.yaml": deployment(DEP, greeting="a-5", port=pa)})
    serves(a, pa, "a-5")
    wait_state(a, DEP, "Installed")
    oa = objects(a)
    b.upstream.commit({f"{DEP}.yaml": deployment(DEP, greeting="b-2", port=pb)})
    serves(b, pb, "b-2")
    wait_state(b, DEP, "Installed")
    untouched(a, oa, pa, "a-5")
    restart_with(b, {f"{DEP}.yaml": deployment(DEP, greeting="b-3", port=pb)})
    serves(b, pb, "b-3")
    wait_state(b, DEP, "Installed")
    untouched(a, oa, pa, "a-5")
    b.upstream.commit({f"{DEP}.yaml": None})
    wait_state(b, DEP, "Removed")
    assert not objects(b)["containers"] and not objects(b)["networks"]
    untouched(a, oa, pa, "a-5")
    assert a.stop() == 0 and b.stop() == 0


@pytest.fixture
def device_pair(
    request: pytest.FixtureRequest, tmp_path: Path, git_server, engine_environ
) -> Iterator[tuple[Rig, Rig]]:
    engine = request.param
    environ = engine_environ(engine)
    suffix = f"{engine}-{tmp_path.name}"[-24:]
    with wossim.WosSimulator() as sim_a, wossim.WosSimulator() as sim_b:
        rigs = []
        for name, sim, driver in (
            ("a", sim_a, "builtin"),
            ("b", sim_b, compose_tool(engine, environ)),
        ):
            folder = tmp_path / f"{tmp_path.name}-{name}"
            folder.mkdir()
            rig = Rig(folder, git_server, environ, sim, device=f"gw-own-{name}-{suffix}")
            rig.configure({"runtime": {"engine": engine, "compose": driver}})
            rigs.append(rig)
        try:
            yield rigs[0], rigs[1]
        finally:
            for rig in rigs:
                rig.cleanup()
                _remove_networks_and_volumes(rig)


def _remove_networks_and_volumes(rig: Rig) -> None:
    """Leave the shared engine store as it was: this test's devices' objects only."""
    found = objects(rig)
    for kind in ("network", "volume"):
        for name in sorted(found[f"{kind}s"]):  # type: ignore[arg-type]
            subprocess.run(
                [rig.engine, kind, "rm", name], env=rig.environ, capture_output=True, timeout=60
            )


@pytest.mark.parametrize("device_pair", ["podman", "docker"], indirect=True)
def test_two_devices_on_one_engine_never_touch_each_other(device_pair) -> None:
    two_devices(*device_pair)
