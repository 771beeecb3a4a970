"""Container backends: apply, remove and check the health of a deployment's components on an engine.

A `Backend` is one engine (podman or docker CLI) plus one compose driver (built-in,
podman-compose, docker-compose v1, docker compose v2). What it creates carries the
ownership labels, this device's id among them (`io.margo.device`); it never touches
anything without them, so several agents (device ids) can share one engine. What an older
margo-lite made before labels named the device is retired by `legacy`.

An apply is safe to repeat and to redo after a crash: the per-component record under
`<state_dir>/backends/` says which digest was applied, and which document to return to
when an update fails (keep the old version until the new one is running and healthy).
The content digest lives in that record rather than as a container label, because a
label that changes with every update would make every service differ, and updates must
recreate only what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from margo_lite import logs
from margo_lite.backends import legacy, project, readiness
from margo_lite.backends.compose import Driver
from margo_lite.backends.engine import Container, Engine
from margo_lite.backends.project import project_name
from margo_lite.backends.runner import reworded
from margo_lite.backends.unit import ComponentHealth, ComponentUnit, ServiceHealth
from margo_lite.constants import COMPOSE_FILE
from margo_lite.errors import ComposeError, EngineError, EngineFailedError, EngineTransientError
from margo_lite.statestore import StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)

RECORDS = "backends"
#: A started container must stay up this long, unrestarted, to count (`runtime.settle`).
SETTLE_SECONDS = 1.0


class Backend:
    """Apply, remove and check components on one engine through one compose driver."""

    def __init__(
        self,
        engine: Engine,
        driver: Driver,
        state_dir: Path,
        *,
        device: str,
        health_timeout: float = 60.0,
        purge_volumes: bool = False,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self.engine = engine
        self.settle = settle
        self.driver = driver
        self.state_dir = Path(state_dir)
        self.device = device
        self.store = StateStore(self.state_dir)
        self.health_timeout = health_timeout
        self.purge_volumes = purge_volumes

    def __repr__(self) -> str:
        return f"Backend({self.engine.name}, {self.driver.name})"

    # --- the interface the agent drives ----------------------------------------------------

    def apply(self, unit: ComponentUnit) -> None:
        """Install or update a component; on a failed update, restore the previous version."""
        from margo_lite import composedoc  # late: the start's sweep reads no compose document

        name = project_name(unit.deployment_id, unit.component, device=self.device)
        doc = composedoc.plain(unit.document)
        if doc.get("name") != name:
            raise ComposeError(f"the document is not the canonical one of project {name}")
        record = self._record(name)
        if (
            record
            and record.get("state") == "applied"
            and record.get("digest") == unit.digest
            and self._health(unit.deployment_id, unit.component, record["doc"]).ok
        ):
            log.debug("%s/%s: unchanged and running", unit.deployment_id, unit.component)
            return
        self.driver.check(doc)
        self._retire_legacy(unit.deployment_id, unit.component, removal=False)
        for image in sorted({str(s["image"]) for s in doc["services"].values() if "image" in s}):
            self.engine.ensure_image(image)
        if record and record.get("state") == "applied":
            previous = {"digest": record["digest"], "doc": record["doc"]}
        else:  # a first install, or an apply cut short: keep what it would have returned to
            previous = (record or {}).get("previous")
        self._write_record(name, unit, "applying", doc, previous)
        log.info(
            "%s/%s: applying with %s on %s (project %s)",
            unit.deployment_id,
            unit.component,
            self.driver.name,
            self.engine.name,
            name,
        )
        try:
            self._up(name, unit, doc)
            self._wait_ready(unit.deployment_id, unit.component, doc)
        except EngineTransientError:
            raise  # the engine is away: nothing to roll back to now; the next apply redoes it
        except EngineError as exc:
            if previous is None:
                log.warning("%s/%s: install failed: %s", unit.deployment_id, unit.component, exc)
                try:  # leave nothing half-installed; the next apply starts afresh anyway
                    self._remove_objects(unit.deployment_id, unit.component, volumes=False)
                except EngineError as cleanup:
                    log.warning("%s: cleaning up after the failed install: %s", name, cleanup)
                self.store.delete(self._record_name(name))
                raise
            self._roll_back(name, unit, doc, previous, exc)
        self._write_record(name, unit, "applied", doc, None)
        log.info("%s/%s: applied", unit.deployment_id, unit.component)

    def remove(self, deployment_id: str, component: str) -> None:
        """Remove the component's containers and networks (and volumes with purge_volumes)."""
        name = project_name(deployment_id, component, device=self.device)
        self._retire_legacy(deployment_id, component, removal=True)
        self._remove_objects(deployment_id, component, volumes=self.purge_volumes)
        self.store.delete(self._record_name(name))
        compose_file = self._workdir(name) / COMPOSE_FILE
        compose_file.unlink(missing_ok=True)
        log.info("%s/%s: removed", deployment_id, component)

    def recorded(self, deployment_id: str, component: str) -> ComponentUnit | None:
        """The document last applied (and checked) for the component, to restore it as it
        was; None when there is no applied record, or one older than canonical documents."""
        name = project_name(deployment_id, component, device=self.device)
        record = self._record(name)
        if not record or record.get("state") != "applied":
            return None
        doc = record.get("doc")
        if not isinstance(doc, dict) or doc.get("name") != name:  # written before issue 13
            return None
        return ComponentUnit(deployment_id, component, doc, record["digest"])

    def health(self, deployment_id: str, component: str) -> ComponentHealth:
        """Per service: running, exited (code), restarting, created, unhealthy or missing.

        A component an older margo-lite installed counts as missing (to be replaced)."""
        record = self._record(project_name(deployment_id, component, device=self.device))
        old = None if record else legacy.record(self.store, RECORDS, deployment_id, component)
        if old and not old.get("retired") and isinstance(old.get("doc"), dict):
            detail = "installed by an older margo-lite without a device label: to be replaced"
            return ComponentHealth(
                {
                    service: ServiceHealth("missing", detail=detail)
                    for service in old["doc"]["services"]
                }
            )
        return self._health(deployment_id, component, record["doc"] if record else None)

    def managed(self) -> set[tuple[str, str]]:
        """(deployment id, component) of every container or network carrying this device's
        labels, and of what an older margo-lite installed for this state dir (`legacy`).

        Volumes are left out: a removed component's volumes are kept on purpose (unless
        purge_volumes), and must not make it look installed.
        """
        mine = project.device_labels(self.device)
        labels = [c.labels for c in self.engine.containers(mine)]
        labels += [n["Labels"] for n in self.engine.networks(mine)]
        return {
            (lab[project.DEPLOYMENT], lab[project.COMPONENT])
            for lab in labels
            if project.DEPLOYMENT in lab and project.COMPONENT in lab
        } | legacy.components(self.store, RECORDS)

    # --- steps -----------------------------------------------------------------------------

    def _up(self, name: str, unit: ComponentUnit, doc: Mapping[str, Any]) -> None:
        """Clear leftovers, then let the driver bring the project to `doc`. A port held by
        an orphaned engine process of our own project is freed once and tried again."""
        kept = self._clear_leftovers(unit.deployment_id, unit.component, doc)
        try:
            self.driver.up(name, doc, self._workdir(name), kept)
        except EngineError as exc:
            if exc.code != "PORT_IN_USE" or not self.engine.reap_orphans(name):
                raise
            log.warning("%s: freed a port held by an orphaned process; trying again", name)
            kept = self._clear_leftovers(unit.deployment_id, unit.component, doc)
            self.driver.up(name, doc, self._workdir(name), kept)

    def _roll_back(
        self,
        name: str,
        unit: ComponentUnit,
        failed: Mapping[str, Any],
        previous: Mapping[str, Any],
        cause: EngineError,
    ) -> None:
        """Bring the previous document back; always raises (ROLLED_BACK, or the failure).

        The containers of every service the update changed go first, whatever state they
        are in (a restart loop included), so the driver only recreates them as they were.
        """
        log.warning(
            "%s/%s: update failed (%s); restoring the previous version",
            unit.deployment_id,
            unit.component,
            cause,
        )
        old = previous["doc"]["services"]
        changed = {
            service
            for service, spec in failed["services"].items()
            if service not in old or project.config_hash(spec) != project.config_hash(old[service])
        }
        try:
            for service, containers in self._containers(unit.deployment_id, unit.component).items():
                if service in changed:
                    self._remove_containers(containers)
            self._up(name, unit, previous["doc"])
            self._wait_ready(unit.deployment_id, unit.component, previous["doc"])
        except EngineError as again:  # the cause's class: its family decides what comes next
            raise reworded(
                cause,
                f"update failed ({cause.message}) and restoring the previous version failed "
                f"too: {again.message}",
                cause.code,
            ) from cause
        self._write_record(
            name,
            unit,
            "applied",
            previous["doc"],
            None,
            digest=previous["digest"],
        )
        raise EngineFailedError(
            f"update failed and the previous version was restored: {cause.message} [{cause.code}]",
            code="ROLLED_BACK",
            argv=cause.argv,
            returncode=cause.returncode,
            stderr=cause.stderr,
        ) from cause

    def _wait_ready(self, deployment_id: str, component: str, doc: Mapping[str, Any]) -> None:
        owned = project.ownership_labels(deployment_id, component, device=self.device)
        timeout, settle = self.health_timeout, self.settle
        readiness.wait_ready(self.engine, owned, doc, timeout=timeout, settle=settle)

    def _health(
        self, deployment_id: str, component: str, doc: Mapping[str, Any] | None
    ) -> ComponentHealth:
        return readiness.health(self.engine, doc, self._containers(deployment_id, component))

    def _containers(self, deployment_id: str, component: str) -> dict[str, list[Container]]:
        owned = project.ownership_labels(deployment_id, component, device=self.device)
        return readiness.by_service(self.engine.containers(owned))

    def _clear_leftovers(
        self, deployment_id: str, component: str, doc: Mapping[str, Any]
    ) -> list[Container]:
        """Before `up`: remove containers of services the document no longer has (they may
        hold ports) and containers that do not run (left in Created or Exited by a crash or
        a failed start); every driver then creates what is missing. Returns the containers
        left, so that the driver need not list them again. The engine's quick listing is
        enough here: the driver reads only labels and states."""
        owned = project.ownership_labels(deployment_id, component, device=self.device)
        kept: list[Container] = []
        for service, containers in readiness.by_service(self.engine.glance(owned)).items():
            if service not in doc["services"]:
                log.info("%s/%s: removing service %r", deployment_id, component, service)
                self._remove_containers(containers)
                continue
            stale = [c for c in containers if c.status not in ("running", "restarting")]
            kept += [c for c in containers if c not in stale]
            if stale:
                log.info(
                    "%s/%s: removing %d stopped container(s) of %r",
                    deployment_id,
                    component,
                    len(stale),
                    service,
                )
                self._remove_containers(stale)
        return kept

    def _remove_containers(self, containers: list[Container]) -> None:
        """Remove containers, dependents first: podman refuses to remove a container that
        another one requires (podman-compose links them so), so retry those after the rest."""
        pending = list(containers)
        for _ in range(len(pending)):
            deferred = []
            for container in pending:
                try:
                    self.engine.remove_container(container.id)
                except EngineError as exc:
                    if "depend" not in exc.stderr:
                        raise
                    deferred.append((container, exc))
            if not deferred:
                return
            if len(deferred) == len(pending):
                raise deferred[0][1]
            pending = [c for c, _ in deferred]

    def _remove_objects(self, deployment_id: str, component: str, *, volumes: bool) -> None:
        owned = project.ownership_labels(deployment_id, component, device=self.device)
        self._remove_containers(self.engine.containers(owned))
        for network in self.engine.networks(owned):
            self.engine.remove_network(network["Name"])
        if volumes:
            for volume in self.engine.volumes(owned):
                self.engine.remove_volume(volume["Name"])

    def _retire_legacy(self, deployment_id: str, component: str, *, removal: bool) -> None:
        legacy.retire(
            self.engine,
            self.store,
            RECORDS,
            deployment_id,
            component,
            remove_containers=self._remove_containers,
            removal=removal,
            volumes=removal and self.purge_volumes,
            workdir=self._workdir(project.legacy_project_name(deployment_id, component)),
        )

    # --- records ---------------------------------------------------------------------------

    def _record_name(self, name: str) -> str:
        return f"{RECORDS}/{name}.json"

    def _workdir(self, name: str) -> Path:
        return self.state_dir / RECORDS / name

    def _record(self, name: str) -> dict[str, Any] | None:
        return self.store.read_json(self._record_name(name))

    def _write_record(
        self,
        name: str,
        unit: ComponentUnit,
        state: str,
        doc: Mapping[str, Any],
        previous: Mapping[str, Any] | None,
        *,
        digest: str | None = None,
    ) -> None:
        # The document may hold parameter values: a secret record.
        self.store.write_json(
            self._record_name(name),
            {
                "deployment_id": unit.deployment_id,
                "component": unit.component,
                "device": self.device,
                "digest": unit.digest if digest is None else digest,
                "state": state,
                "doc": doc,
                "previous": previous,
            },
            secret=True,
        )
