"""The upgrade to per-device ownership on real engines: what an older margo-lite installed
for this device (its record in this state dir) is found and replaced on the next apply, or
removed with the component; what it installed for another device sharing the engine (no
record here) is never touched. See docs/decisions.md, "Upgrade to per-device ownership".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from margo_lite.backends import Backend, legacy, select
from margo_lite.backends import project as proj
from margo_lite.config import RuntimeConfig
from margo_lite.errors import EngineError
from tests.support.engines import free_port, http_get
from tests.support.legacy import install_as_older_version, install_doc_as_older_version
from tests.support.rig import app_files
from tests.support.wait import wait_for
from tests.test_backends_engines import DEVICE, make_backend, unit, write_app

pytestmark = [pytest.mark.slow, pytest.mark.engine]

COMBOS = [("podman", "builtin"), ("docker", "docker-compose")]

APP = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo start >> /data/starts.txt;
      echo hi > /data/index.html; httpd -f -p 8080 -h /data & wait"]
    ports: ["127.0.0.1:{port}:8080"]
    volumes: ["data:/data"]
volumes:
  data: {{}}
"""


def _named(objects: list[dict], prefix: str) -> set[str]:
    return {str(o["Name"]) for o in objects if str(o["Name"]).startswith(f"{prefix}_")}


@pytest.mark.parametrize(("engine", "driver"), COMBOS, ids=[f"{e}-{d}" for e, d in COMBOS])
def test_upgrade_replaces_this_devices_older_objects_only(
    engine: str, driver: str, engine_environ, tmp_path: Path
) -> None:
    backend = make_backend(engine, driver, engine_environ(engine), tmp_path / "state")
    purge = Backend(
        backend.engine, backend.driver, tmp_path / "state", device=DEVICE, purge_volumes=True
    )
    eng = backend.engine
    dep, theirs, gone = (f"upgrade-{what}-{engine}" for what in ("mine", "theirs", "gone"))
    port, their_port = free_port(), free_port()
    mine_dir = write_app(tmp_path / "mine", port, text=APP)
    mine = unit(mine_dir, dep, "m1")
    old_name = install_as_older_version(backend, mine, mine_dir)
    their_dir = write_app(tmp_path / "theirs", their_port, text=APP)
    their_name = install_as_older_version(
        backend, unit(their_dir, theirs, "t1"), their_dir, record=False
    )
    try:
        assert wait_for(
            lambda: http_get(port) == "hi\n", timeout=120, what="the older installation"
        )
        assert wait_for(lambda: http_get(their_port) == "hi\n", timeout=120, what="the other one")
        old_ids = {c.id for c in legacy.containers(eng, dep, "app")}
        their_ids = {c.id for c in legacy.containers(eng, theirs, "app")}
        assert old_ids and their_ids

        # before the first apply: this device's older component is known, and not healthy
        assert (dep, "app") in backend.managed()
        assert (theirs, "app") not in backend.managed()
        health = backend.health(dep, "app")
        assert not health.ok and "older margo-lite" in "".join(health.problems())

        # the next apply replaces it: same port (so the old container is gone), new names
        backend.apply(mine)
        assert wait_for(lambda: http_get(port) == "hi\n", timeout=120, what="the new one")
        assert all(eng.container(cid) is None for cid in old_ids)
        (web,) = eng.containers(proj.ownership_labels(dep, "app", device=DEVICE))
        assert web.labels[proj.DEVICE] == DEVICE
        assert web.name.startswith(proj.project_name(dep, "app", device=DEVICE))
        assert not _named(eng.networks({proj.DEPLOYMENT: dep}), old_name)
        # the older volume is kept (its data is not carried over), and logged
        assert _named(eng.volumes({proj.DEPLOYMENT: dep}), old_name) == {f"{old_name}_data"}
        assert legacy.record(backend.store, "backends", dep, "app")["retired"] is True
        assert backend.health(dep, "app").ok
        assert http_get(port, "/starts.txt") == "start\n"  # a fresh volume

        # an update after that touches nothing old; a removal with purge_volumes takes the
        # older volume and the record with it
        backend.apply(unit(write_app(tmp_path / "mine2", port, text=APP), dep, "m2"))
        assert [c.id for c in eng.containers({proj.DEPLOYMENT: dep})] == [web.id]
        assert _named(eng.volumes({proj.DEPLOYMENT: dep}), old_name) == {f"{old_name}_data"}
        purge.remove(dep, "app")
        assert not _named(eng.volumes({proj.DEPLOYMENT: dep}), old_name)
        assert legacy.record(backend.store, "backends", dep, "app") is None
        assert (dep, "app") not in backend.managed()

        # what another device's older agent installed here is untouched
        assert {c.id for c in legacy.containers(eng, theirs, "app")} == their_ids
        assert all(c.status == "running" for c in legacy.containers(eng, theirs, "app"))
        assert http_get(their_port) == "hi\n"
        assert _named(eng.networks({proj.DEPLOYMENT: theirs}), their_name)
        assert _named(eng.volumes({proj.DEPLOYMENT: theirs}), their_name)

        # an older component removed from the desired state goes, volumes too with purge
        gone_dir = write_app(tmp_path / "gone", free_port(), text=APP)
        gone_name = install_as_older_version(backend, unit(gone_dir, gone, "g1"), gone_dir)
        assert (gone, "app") in backend.managed()
        purge.remove(gone, "app")
        assert legacy.containers(eng, gone, "app") == []
        assert not _named(eng.networks({proj.DEPLOYMENT: gone}), gone_name)
        assert not _named(eng.volumes({proj.DEPLOYMENT: gone}), gone_name)
        assert (gone, "app") not in backend.managed()
        assert {c.id for c in legacy.containers(eng, theirs, "app")} == their_ids
    finally:
        with contextlib.suppress(EngineError):
            purge.remove(dep, "app")
        for c in legacy.containers(eng, theirs, "app"):
            eng.remove_container(c.id)
        for name in _named(eng.networks({proj.DEPLOYMENT: theirs}), their_name):
            eng.remove_network(name)
        for dep_id, prefix in ((theirs, their_name), (dep, old_name)):
            for name in _named(eng.volumes({proj.DEPLOYMENT: dep_id}), prefix):
                eng.remove_volume(name)


def test_agent_upgrade_takes_over_without_alarming_the_wos(rig) -> None:
    """An Installed deployment whose containers an older margo-lite made: the upgraded
    agent replaces them as it restores drift (the WOS hears nothing new), and serves on."""
    port = free_port()
    rig.upstream.commit(app_files(port, "kept"))
    assert rig.once().returncode == 0
    backend = select(
        RuntimeConfig(engine="podman", compose="builtin"),
        rig.tmp / "state",
        rig.environ,
        device=rig.device,
    )
    record = backend.store.read_json(
        f"backends/{proj.project_name('web-1', 'web', device=rig.device)}.json"
    )
    backend.remove("web-1", "web")  # and now as the older version would have left it:
    install_doc_as_older_version(backend, "web-1", "web", record["digest"], record["doc"])
    old_ids = {c.id for c in legacy.containers(backend.engine, "web-1", "web")}
    assert old_ids and rig.containers() == []  # nothing labelled for this device yet
    assert wait_for(lambda: (http_get(port) or "").strip() == "kept", what="the older one")

    rig.start()
    wait_for(lambda: len(rig.running("web-1")) == 1, timeout=120, what="the new container")
    assert wait_for(lambda: (http_get(port) or "").strip() == "kept", what="the app")
    assert all(backend.engine.container(cid) is None for cid in old_ids)
    wait_for(lambda: "web-1/web restored" in rig.log_text(), timeout=60, what="the log line")
    assert "replacing what an older margo-lite installed" in rig.log_text()
    assert rig.states("web-1") == ["Pending", "Installing", "Installed"]
    assert rig.stop() == 0
