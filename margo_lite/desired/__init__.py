"""The desired state: `ApplicationDeployment` documents parsed into an immutable model.

Pure: the caller passes every file below `git.path` as bytes. Parameters are resolved per
component into environment variables and compose overlays, and each component gets a
digest of everything that defines it (spec, resolved parameters, bytes of an in-repository
package), so the planner can leave anything unchanged untouched. The steps, each in its
module: `files` (every document of a folder, limits, duplicates), `document` (one
document), `parameters` (parameter targets), `model` (the result), `values` (freeze, thaw,
digest, overlays). Callers import what they need from here.
"""

from __future__ import annotations

from margo_lite.desired.files import parse_files
from margo_lite.desired.model import (
    API_VERSIONS,
    COMPOSE,
    DEFAULT_LIMITS,
    DEPENDS_ON,
    DEPLOYMENT_ID,
    HELM,
    KIND,
    PROFILE_TYPES,
    Component,
    Deployment,
    DesiredState,
    DocumentFailure,
    Limits,
)
from margo_lite.desired.values import apply_overlays, thaw

__all__ = [
    "API_VERSIONS",
    "COMPOSE",
    "DEFAULT_LIMITS",
    "DEPENDS_ON",
    "DEPLOYMENT_ID",
    "HELM",
    "KIND",
    "PROFILE_TYPES",
    "Component",
    "Deployment",
    "DesiredState",
    "DocumentFailure",
    "Limits",
    "apply_overlays",
    "parse_files",
    "thaw",
]
