"""Components an older margo-lite installed before ownership was per device.

Those objects carry `io.margo.managed-by=margo-lite` and the deployment and component
labels but no `io.margo.device`, and their names start with `project.legacy_project_name`
(no device in its hash). Labels alone cannot say which device made them when several
agents share an engine, so one proof is accepted: the backend record the older version
wrote under `<state_dir>/backends/<legacy name>.json` before creating anything, and
deleted only after removing everything. A component with such a record in this state dir
is this device's; on its next apply or removal its containers and networks are removed
and the new version creates what it needs under the per-device name. Its named volumes
are kept (as a removal keeps them), logged with their names, and the record stays, marked
retired, until the component is removed: `purge_volumes` then removes them too. Objects
without such a record are never touched: another device's agent may own them
(docs/decisions.md, "Upgrade to per-device ownership").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from margo_lite import logs
from margo_lite.backends import project
from margo_lite.backends.engine import Container, Engine
from margo_lite.constants import COMPOSE_FILE
from margo_lite.errors import StateError
from margo_lite.statestore import StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)


def record_name(folder: str, deployment_id: str, component: str) -> str:
    return f"{folder}/{project.legacy_project_name(deployment_id, component)}.json"


def record(store: StateStore, folder: str, deployment_id: str, component: str) -> Any:
    """The older version's record of this component in this state dir, or None; marked
    `retired` once its containers and networks were replaced."""
    found = store.read_json(record_name(folder, deployment_id, component))
    return found if isinstance(found, dict) and "device" not in found else None


def components(store: StateStore, folder: str) -> set[tuple[str, str]]:
    """(deployment id, component) of every record the older version left in this state dir."""
    found = set()
    for name in store.names(folder):
        try:
            data = store.read_json(name)
        except StateError as exc:  # that component's own steps report it; the sweep goes on
            log.warning("skipping unreadable record %s: %s", name, exc)
            continue
        if not isinstance(data, dict) or "device" in data:
            continue
        deployment_id, component = data.get("deployment_id"), data.get("component")
        if (
            isinstance(deployment_id, str)
            and isinstance(component, str)
            and name == record_name(folder, deployment_id, component)
        ):
            found.add((deployment_id, component))
    return found


def _theirs(labels: Any, name: str, prefix: str) -> bool:
    """An object of the legacy project: no device label, and a name of that project."""
    return (
        isinstance(labels, dict)
        and project.DEVICE not in labels
        and (name == prefix or name.startswith((f"{prefix}-", f"{prefix}_")))
    )


def containers(engine: Engine, deployment_id: str, component: str) -> list[Container]:
    prefix = project.legacy_project_name(deployment_id, component)
    old = _old_labels(deployment_id, component)
    return [c for c in engine.containers(old) if _theirs(c.labels, c.name, prefix)]


def retire(
    engine: Engine,
    store: StateStore,
    folder: str,
    deployment_id: str,
    component: str,
    *,
    remove_containers: Callable[[list[Container]], None],
    removal: bool,
    volumes: bool,
    workdir: Path,
) -> None:
    """Remove what the older version made of this component, if this state dir proves it
    is this device's. Safe to repeat.

    Before an apply (`removal` false) the containers and networks go and the record is
    kept, marked retired, while the old volumes stay: they go with the component's removal
    when `volumes` (purge_volumes) says so, and the record then goes too.
    """
    found = record(store, folder, deployment_id, component)
    if found is None:
        return
    prefix = project.legacy_project_name(deployment_id, component)
    old = _old_labels(deployment_id, component)
    if not found.get("retired"):
        log.warning(
            "%s/%s: replacing what an older margo-lite installed as project %s",
            deployment_id,
            component,
            prefix,
        )
        remove_containers(containers(engine, deployment_id, component))
        for network in engine.networks(old):
            if _theirs(network["Labels"], str(network["Name"]), prefix):
                engine.remove_network(network["Name"])
        (workdir / COMPOSE_FILE).unlink(missing_ok=True)
    for volume in engine.volumes(old):
        if not _theirs(volume["Labels"], str(volume["Name"]), prefix):
            continue
        if volumes:
            engine.remove_volume(volume["Name"])
        elif not found.get("retired"):
            log.warning(
                "%s/%s: volume %s of the older installation is kept, its data not carried "
                "over; it goes when the component is removed with runtime.purge_volumes",
                deployment_id,
                component,
                volume["Name"],
            )
    name = record_name(folder, deployment_id, component)
    if removal:
        store.delete(name)
    elif not found.get("retired"):
        store.write_json(
            name, {"deployment_id": deployment_id, "component": component, "retired": True}
        )


def _old_labels(deployment_id: str, component: str) -> dict[str, str]:
    return {
        project.MANAGED_BY: project.MANAGED_BY_VALUE,
        project.DEPLOYMENT: deployment_id,
        project.COMPONENT: component,
    }
