"""Container backends: which engine and compose driver this device uses.

`select` picks them from the `runtime` configuration; the `Backend` that drives them
(apply, remove, check health, roll back) is in `backends.backend`, the values it takes and gives
in `backends.unit`, the engines in `backends.engine`, the compose drivers in
`backends.compose` and `backends.builtin`. Callers import all of these from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from margo_lite import logs
from margo_lite.backends import legacy, project
from margo_lite.backends.backend import Backend
from margo_lite.backends.builtin import BuiltinDriver
from margo_lite.backends.compose import (
    DockerComposePlugin,
    DockerComposeV1,
    Driver,
    PodmanCompose,
)
from margo_lite.backends.engine import ENGINES
from margo_lite.backends.project import load_project, project_name
from margo_lite.backends.unit import ComponentHealth, ComponentUnit, ServiceHealth
from margo_lite.errors import ConfigError, EngineTransientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "Backend",
    "ComponentHealth",
    "ComponentUnit",
    "DockerComposePlugin",
    "DockerComposeV1",
    "PodmanCompose",
    "ServiceHealth",
    "legacy",
    "load_project",
    "project",
    "project_name",
    "select",
]

log = logs.get(__name__)

DRIVERS: dict[str, type[Driver]] = {
    "builtin": BuiltinDriver,
    "podman-compose": PodmanCompose,
    "docker-compose": DockerComposeV1,
    "docker-compose-plugin": DockerComposePlugin,
}
DRIVER_ENGINES = {
    "podman-compose": "podman",
    "docker-compose": "docker",
    "docker-compose-plugin": "docker",
}
AUTO_DRIVERS = {
    "podman": ("podman-compose", "builtin"),
    "docker": ("docker-compose-plugin", "docker-compose", "builtin"),
}


def select(cfg: Any, state_dir: Path, environ: Mapping[str, str], *, device: str) -> Backend:
    """The backend `runtime` configures: `auto` picks the engine that answers and the first
    compose driver present for it, and logs the choice."""
    engine_name = cfg.engine
    if engine_name == "auto":
        for candidate in ("podman", "docker"):
            if ENGINES[candidate](environ).available():
                engine_name = candidate
                break
        else:
            raise EngineTransientError(
                "no container engine answers (looked for podman, then docker)",
                code="ENGINE_UNAVAILABLE",
            )
    engine = ENGINES[engine_name](environ)
    wanted = cfg.compose
    if wanted != "auto" and DRIVER_ENGINES.get(wanted, engine_name) != engine_name:
        raise ConfigError(
            f"compose driver {wanted} does not work with engine {engine_name}",
            key="runtime.compose",
        )
    if wanted == "auto":
        driver = next(
            d for d in (DRIVERS[n](engine) for n in AUTO_DRIVERS[engine_name]) if d.available()
        )
    else:
        driver = DRIVERS[wanted](engine)
        if not driver.available():
            raise EngineTransientError(
                f"compose driver {wanted} is not installed or does not answer",
                code="ENGINE_UNAVAILABLE",
            )
    log.info(
        "container engine: %s (%s), compose driver: %s%s",
        engine.name,
        "detected" if cfg.engine == "auto" else "configured",
        driver.name,
        " (detected)" if wanted == "auto" else "",
    )
    return Backend(
        engine,
        driver,
        state_dir,
        device=device,
        health_timeout=cfg.health_timeout,
        purge_volumes=cfg.purge_volumes,
        settle=cfg.settle,
    )


__all__ += ["Docker", "Engine", "Podman"]
