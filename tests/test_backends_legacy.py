"""Which records prove that an older margo-lite's component belongs to this device (the
engine side is in tests/test_backends_upgrade.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from margo_lite.backends import legacy, project
from margo_lite.statestore import StateStore


def test_only_the_older_versions_own_records_count(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    older = {"deployment_id": "web-1", "component": "web", "doc": {"services": {"web": {}}}}
    store.write_json(legacy.record_name("backends", "web-1", "web"), older)
    # a record of the new version (it names its device), under either name
    newer = {**older, "deployment_id": "web-2", "device": "gw"}
    store.write_json(legacy.record_name("backends", "web-2", "web"), newer)
    name = project.project_name("web-3", "web", device="gw")
    store.write_json(f"backends/{name}.json", {**newer, "deployment_id": "web-3"})
    # a record whose name does not match what it says it holds
    store.write_json(
        legacy.record_name("backends", "web-4", "web"), {**older, "deployment_id": "web-5"}
    )
    store.write_json("backends/junk.json", ["not", "a", "record"])
    (tmp_path / "backends" / "torn.json").write_bytes(b"\x00garbage")  # unreadable: skipped

    assert legacy.components(store, "backends") == {("web-1", "web")}
    assert legacy.record(store, "backends", "web-1", "web") == older
    assert legacy.record(store, "backends", "web-2", "web") is None
    assert legacy.record(store, "backends", "web-9", "web") is None


def test_legacy_names_are_the_older_scheme() -> None:
    # the name an older margo-lite gave ("ml-" + short ids + hash of deployment and component)
    digest = hashlib.sha256(b"web-1\0web").hexdigest()[:10]
    assert project.legacy_project_name("web-1", "web") == f"ml-web-1-web-{digest}"
    assert project.legacy_project_name("web-1", "web") != project.project_name(
        "web-1", "web", device="gw"
    )
