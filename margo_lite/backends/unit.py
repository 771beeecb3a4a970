"""What a backend takes and gives: a component ready to run, and the health of its services.

`ComponentUnit` is the canonical compose document of one component (the one the policy
gate checked, names derived and ownership labels set); `ComponentHealth` is what
`Backend.health` sees of its services. Plain values, so the agent and its tests can build
and compare them without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class ComponentUnit:
    """One component of a deployment, ready to run: its canonical compose document.

    The document is the one the policy gate checked (`composedoc.build`, names derived and
    ownership labels set); drivers render from it and the record keeps it."""

    deployment_id: str
    component: str
    document: Mapping[str, Any] = field(repr=False)  # may hold parameter values
    digest: str  # covers the document; unchanged digest, untouched unit

    @classmethod
    def from_package(
        cls,
        deployment_id: str,
        component: str,
        package_dir: Path,
        env: Mapping[str, str],
        overlays: Mapping[str, Any],
        digest: str,
        *,
        device: str,
    ) -> ComponentUnit:
        """Build the canonical document of a package folder (no policy check: see agent)."""
        from margo_lite import composedoc  # late: the start's sweep reads no compose document

        document = composedoc.build(
            package_dir,
            env,
            overlays,
            deployment_id=deployment_id,
            component=component,
            device=device,
        )
        return cls(
            deployment_id,
            component,
            document,
            composedoc.digest({"component": digest, "document": document}),
        )


@dataclass(frozen=True)
class ServiceHealth:
    """state: running, exited, restarting, created, missing or unhealthy."""

    state: str
    exit_code: int | None = None
    detail: str = ""


#: Engine states of a container on its way out (podman and docker `ps`).
SETTLING = frozenset({"stopping", "removing"})


@dataclass(frozen=True)
class ComponentHealth:
    services: Mapping[str, ServiceHealth] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every service runs (healthy where checked), or ended successfully for one-shots."""
        return bool(self.services) and all(
            s.state == "running" or (s.state == "exited" and s.exit_code == 0)
            for s in self.services.values()
        )

    @property
    def settling(self) -> bool:
        """A service is being stopped or removed right now (by an operator, or the engine):
        what it ends as is not known yet, so nothing is done about it until then."""
        return any(s.state in SETTLING for s in self.services.values())

    def problems(self) -> list[str]:
        return [
            f"{name}: {s.state}"
            + (f" (exit code {s.exit_code})" if s.state == "exited" else "")
            + (f": {s.detail}" if s.detail else "")
            for name, s in sorted(self.services.items())
            if not (s.state == "running" or (s.state == "exited" and s.exit_code == 0))
        ]
