"""The desired state as an immutable model: deployments, their components, failed documents.

What the parser produces and the planner reads: `DesiredState` holds every valid
`Deployment` (components with parameters resolved and a digest of everything that defines
them) and a `DocumentFailure` for every document that could not be used. The names and
bounds of the contract (API version, kind, profile types, id grammars) are here too, so
the parser and its callers read them from one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from margo_lite import yamlload
from margo_lite.errors import DesiredStateError
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

API_VERSIONS = ("application.margo.org/v1alpha1",)
KIND = "ApplicationDeployment"
COMPOSE = "docker-compose"
HELM = "helm.v3"
PROFILE_TYPES = (COMPOSE, HELM)
#: a deployment profile's type as Margo 1.0 and the draft spell it -> the one margo-lite uses
PROFILE_ALIASES = {"compose": COMPOSE, COMPOSE: COMPOSE, "helm": HELM, HELM: HELM}
#: Optional annotation: comma-separated ids of deployments that must be Installed first.
DEPENDS_ON = "margo-lite.io/depends-on"

#: Safe as a file name, a container label and part of a compose project name.
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
APPLICATION_ID = re.compile(r"[a-z0-9-]{1,200}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
MAX_NAME = 253
MAX_COMPONENTS = 64
MAX_PARAMETERS = 1024


_YAML_LIMITS = yamlload.Limits(max_bytes=1024 * 1024)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one poll may feed the parser; `yaml` bounds each file."""

    max_file_bytes: int = 1024 * 1024
    max_total_bytes: int = 4 * 1024 * 1024  # the pure-Python parser reads ~100 KB/s here
    max_documents: int = 1000
    yaml: yamlload.Limits = _YAML_LIMITS


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Component:
    """One component, parameters resolved. `properties` and `overlays` are deep-frozen."""

    name: str
    package_location: str | None
    key_location: str | None
    # Kept out of repr: parameter values and package URLs may hold secrets.
    properties: Mapping[str, Any] = field(repr=False)
    env: Mapping[str, str] = field(repr=False)
    overlays: Mapping[str, Any] = field(repr=False)  # dotted pointer -> value
    digest: str = ""
    package_in_repo: bool = False  # package_location is a path in the desired-state folder
    key_in_repo: bool = False

    def __hash__(self) -> int:  # the mappings are not hashable; equal components share a digest
        return hash((self.name, self.digest))


@dataclass(frozen=True)
class Deployment:
    id: str
    application_id: str
    name: str
    namespace: str
    profile_type: str
    components: tuple[Component, ...]
    depends_on: tuple[str, ...]
    source: str  # "file document N"
    digest: str

    def __hash__(self) -> int:
        return hash((self.id, self.digest))

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


@dataclass(frozen=True)
class DocumentFailure:
    """A document that could not be used; `deployment_id` is None when it was unreadable."""

    source: str
    deployment_id: str | None
    error: DesiredStateError


@dataclass(frozen=True)
class DesiredState:
    deployments: tuple[Deployment, ...] = ()
    failures: tuple[DocumentFailure, ...] = ()

    @property
    def complete(self) -> bool:
        """False when some failed document could not be tied to a deployment id.

        Such a document may describe a running deployment, so the planner must not take
        its absence as "remove it".
        """
        return all(f.deployment_id is not None for f in self.failures)


def is_v1(doc: Any) -> bool:
    """Whether `doc` uses the 1.0 shape (or one on the way to it), not the draft's."""
    if not isinstance(doc, dict):
        return False
    metadata, spec = doc.get("metadata"), doc.get("spec")
    return (
        "id" in doc
        or (isinstance(metadata, dict) and "deviceId" in metadata)
        or (isinstance(spec, dict) and "applicationId" in spec)
    )
