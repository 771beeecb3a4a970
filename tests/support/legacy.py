"""What margo-lite left on an engine before ownership was per device, for the upgrade tests.

The older version named a project after (deployment, component) only, labelled its objects
without `io.margo.device`, and kept its record under `backends/<that name>.json` without a
`device` field. This recreates exactly that, through the same engine commands and compose
tools the older version used, so that the new version can be shown to take it over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from margo_lite.backends import Backend, ComponentUnit, builtin, load_project, project


def install_as_older_version(
    backend: Backend, unit: ComponentUnit, package_dir: Path, *, record: bool = True
) -> str:
    """Install `unit` (built from `package_dir`) as the older version did; returns its
    (legacy) project name. The older version's document had no derived names.

    `record=False` leaves no record in this state dir: what another device's older agent
    installed on the same engine looks like from here.
    """
    doc = project.with_ownership(
        load_project(package_dir, {}, {}), unit.deployment_id, unit.component, device="older"
    )
    return install_doc_as_older_version(
        backend, unit.deployment_id, unit.component, unit.digest, doc, record=record
    )


def install_doc_as_older_version(
    backend: Backend,
    deployment_id: str,
    component: str,
    digest: str,
    doc: dict[str, Any],
    *,
    record: bool = True,
) -> str:
    """The same from a labelled document (a newer record's): its device labels dropped."""
    name = project.legacy_project_name(deployment_id, component)
    doc = _as_older(_without_device(doc))
    if record:
        backend.store.write_json(
            f"backends/{name}.json",
            {
                "deployment_id": deployment_id,
                "component": component,
                "digest": digest,
                "state": "applied",
                "doc": doc,
                "previous": None,
            },
            secret=True,
        )
    if backend.driver.name != "builtin":
        backend.driver.up(name, doc, backend.state_dir / "backends" / name)
        return name
    # the older built-in driver: network, volumes, then one `run -d` per service
    engine = backend.engine
    engine.create_network(builtin.network_name(name, doc), doc["networks"]["default"]["labels"])
    for volume, definition in (doc.get("volumes") or {}).items():
        engine.create_volume(builtin.volume_name(name, doc, volume), definition["labels"])
    for service in project.service_order(doc):
        argv = builtin.BuiltinDriver.run_argv(None, name, doc, service)  # type: ignore[arg-type]
        engine.run(["run", "-d", "--label", f"{project.CONFIG_HASH}=older", *argv])
    return name


def _without_device(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_device(v) for k, v in value.items() if k != project.DEVICE}
    if isinstance(value, list):
        return [_without_device(v) for v in value]
    return value


def _as_older(doc: dict[str, Any]) -> dict[str, Any]:
    """The older version's document had no derived names: its network and volumes were
    named after its own (legacy) project, never after the newer version's."""
    doc = {k: v for k, v in doc.items() if k != "name"}
    for key in ("networks", "volumes"):
        if isinstance(doc.get(key), dict):
            doc[key] = {
                item: {k: v for k, v in (definition or {}).items() if k != "name"}
                if not (definition or {}).get("external")
                else definition
                for item, definition in doc[key].items()
            }
    return doc
