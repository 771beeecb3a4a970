"""Whether a component's containers run as its compose file asks: the wait after a start, and
a health look.

`wait_ready` waits until every service runs and is healthy and stays so for `settle`
seconds, failing early (HEALTHCHECK_FAILED) on a service that exited, restarts or is
unhealthy; `check` is one look at the containers; `health` reports each service's state for
the agent's heal. The engine is passed in: it lists the containers and runs a health check
now where the engine would wait for its own timer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from margo_lite.backends import project
from margo_lite.backends.engine import Container, Engine
from margo_lite.backends.unit import ComponentHealth, ServiceHealth
from margo_lite.errors import EngineFailedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

POLL_SECONDS = 0.1  # how often a start is looked at while it settles (one engine command)


def wait_ready(
    engine: Engine,
    owned: Mapping[str, str],
    doc: Mapping[str, Any],
    *,
    timeout: float,
    settle: float,
) -> None:
    """Wait until every service runs and is healthy, then stays up for `settle` seconds.

    Fails early on a service that exited, restarts, or is unhealthy; fails with
    HEALTHCHECK_FAILED when `timeout` passes first. Looks every POLL_SECONDS with the
    engine's quick listing; a full look at the same containers (restart counts) confirms the
    end. The start has returned when this is called, so what runs and is ready at the first
    look has been up since the call: the window counts from there (from the look otherwise).
    """
    called = time.monotonic()
    deadline = called + timeout
    settled: dict[str, tuple[str, str, int]] | None = None
    settle_at = look = 0.0  # look: how long the last quick look took
    since: float | None = called  # None once a look saw a service not ready, or a change
    containers: dict[str, list[Container]] = {}
    while True:
        if settled is not None and time.monotonic() + look >= settle_at:
            # no quick look would end before the window does: wait it out, then confirm
            time.sleep(max(0.0, settle_at - time.monotonic()))
            ids = [c.id for cs in containers.values() for c in cs]
            problem, waiting = check(engine, doc, by_service(engine.inspect_containers(ids, owned)))
            if problem:
                raise EngineFailedError(problem, code="HEALTHCHECK_FAILED")
            if not waiting:
                return
            settled = None
        else:
            started = time.monotonic()
            containers = by_service(engine.glance(owned))
            seen = time.monotonic()
            look = seen - started
            problem, waiting = check(engine, doc, containers)
            if problem:
                raise EngineFailedError(problem, code="HEALTHCHECK_FAILED")
            if waiting:
                settled = since = None
            else:
                now = {
                    c.labels[project.SERVICE]: (c.id, c.started_at, c.restart_count)
                    for cs in containers.values()
                    for c in cs
                }
                if settled is None or settled != now:
                    anchor = since if settled is None and since is not None else seen
                    settled, settle_at, since = now, anchor + settle, None
        if time.monotonic() >= deadline:
            raise EngineFailedError(
                f"not running and healthy within {timeout:g}s: {waiting}",
                code="HEALTHCHECK_FAILED",
            )
        pause = POLL_SECONDS if settled is None else settle_at - time.monotonic()
        time.sleep(min(POLL_SECONDS, max(0.0, pause)))


def check(
    engine: Engine, doc: Mapping[str, Any], containers: Mapping[str, list[Container]]
) -> tuple[str, str]:
    """(problem, what is still awaited) for one look at the containers."""
    waiting = []
    for service, spec in doc["services"].items():
        found = containers.get(service) or []
        if not found:
            return f"service {service}: no container was created", ""
        c = found[0]
        restart = str(spec.get("restart") or "no")
        if c.status in ("exited", "stopped"):  # podman says "stopped" for a moment first
            if c.exit_code == 0 and restart in ("no", "on-failure"):
                continue
            return f"service {service}: exited with code {c.exit_code}", ""
        if c.status == "restarting" or c.restart_count > 0:
            return f"service {service}: keeps restarting (exit code {c.exit_code})", ""
        if c.status != "running":
            return f"service {service}: did not start ({c.status})", ""
        if c.health == "unhealthy":
            return f"service {service}: health check failed", ""
        if c.health == "starting":
            engine.run_health_check(c.id)
            waiting.append(f"service {service} health check")
    return "", ", ".join(waiting)


def health(
    engine: Engine, doc: Mapping[str, Any] | None, containers: Mapping[str, list[Container]]
) -> ComponentHealth:
    """Per service: running, exited (code), restarting, created, unhealthy or missing."""
    names = list(doc["services"]) if doc else sorted(containers)
    services = {}
    for service in names:
        found = containers.get(service)
        if not found:
            services[service] = ServiceHealth("missing")
            continue
        c = found[0]
        if c.status == "running" and c.health:
            engine.run_health_check(c.id)
            c = engine.container(c.id) or c
        if c.status == "running" and c.health == "unhealthy":
            services[service] = ServiceHealth("unhealthy", detail="health check failed")
        elif c.status in ("running", "restarting", "created"):
            services[service] = ServiceHealth(c.status)
        elif c.status in ("exited", "stopped", "dead"):
            services[service] = ServiceHealth("exited", c.exit_code)
        else:
            services[service] = ServiceHealth(c.status or "unknown")
    return ComponentHealth(services)


def by_service(containers: list[Container]) -> dict[str, list[Container]]:
    """The containers by the compose service they run (its label)."""
    found: dict[str, list[Container]] = {}
    for c in containers:
        found.setdefault(c.labels.get(project.SERVICE, ""), []).append(c)
    return found
