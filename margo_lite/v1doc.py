"""The Margo 1.0 ApplicationDeployment shape, normalised into the draft shape `desired` parses.

Pure. A v1 document (rc.3 `appDeploymentManifest`) has a top-level `id`, `metadata`
(`name`, `namespace`, `deviceId`, optional `labels`, `annotations`) and `spec`
(`applicationId`, `deploymentProfile` {`type`: compose | helm, `components`[{`name`,
`properties` {`repository`: oci://..., `revision`, `wait`?, `timeout`?}}], optional
`deviceConstraints`}, optional `parameters`); `apiVersion` and `kind` may be absent.
The intermediate shapes the specification's own examples use on the way (a top-level `id`
with `metadata.annotations.applicationId`, compose components with `packageLocation`) are
read too. What the schema closes (`spec`, the profile, a component) admits only its own
keys and `x-<name>-extensions` mappings. Everything else (names, parameters, pointers)
is then checked once, by the draft parser, on the normalised document: one model, one set
of rules.

Decisions: a top-level `id` must be a UUID (the 1.0 model's; `metadata.annotations.id`
keeps the draft's grammar); `compose` and `docker-compose` are one profile, `helm` and
`helm.v3` another (the planner fails a helm deployment as unsupported); a plain compose
pointer `NAME` means `ENV.NAME`; a document without `metadata.deviceId` is for whichever
device receives it, one with a `deviceId` must name this device, or end in `/*` and name
its parent (`gw/*` matches `gw/sensor-1`); else the deployment fails with WRONG_DEVICE.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from margo_lite import oci
from margo_lite.desired.model import PROFILE_ALIASES
from margo_lite.desired.parameters import Fields
from margo_lite.desired.values import show
from margo_lite.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KIND = "ApplicationDeployment"
API_VERSIONS = ("application.margo.org/v1alpha1", "application.margo.org/v1")
DRAFT_API_VERSION = "application.margo.org/v1alpha1"
EXTENSION = re.compile(r"x-[a-z][a-z0-9-]*-extensions")
DEVICE_ID = re.compile(r"[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*(?:/\*)?")
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:_([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
TIMEOUT = re.compile(r"\d{1,6}m\d{1,6}s")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
APPLICATION_ID = re.compile(r"[-a-z0-9]{1,200}")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_ID = 253


def matches_device(pattern: str, device_id: str) -> bool:
    """`deviceId` names this device, or ends in `/*` and names one of its parents."""
    if pattern.endswith("/*"):
        return device_id.startswith(pattern[:-1]) and len(device_id) > len(pattern) - 1
    return pattern == device_id


class _Normaliser(Fields):
    """Reads one v1 document (the draft parser's field readers: same messages and codes)."""

    def __init__(self, doc: dict, source: str) -> None:
        super().__init__(doc, source, {})

    def closed(self, value: Mapping, allowed: tuple[str, ...], where: str) -> None:
        """The schema's `additionalProperties: false` with `x-<name>-extensions` allowed."""
        for key in value:
            if key in allowed:
                continue
            if isinstance(key, str) and EXTENSION.fullmatch(key):
                if not isinstance(value[key], dict):
                    raise self.fail("NOT_A_MAPPING", f"{where}.{key}", "an extension is a mapping")
                continue
            raise self.fail(
                "INVALID_FIELD",
                f"{where}.{key}" if where else str(key),
                f"{show(key)} is not a field here (allowed: {', '.join(allowed)}, "
                "x-<name>-extensions)",
            )

    def one_of(self, first: tuple[Any, str], second: tuple[Any, str]) -> Any:
        """A value that may sit in either of two places; both given must agree."""
        (a, a_where), (b, b_where) = first, second
        if a is not None and b is not None and a != b:
            raise self.fail("INVALID_FIELD", a_where, f"{show(a)} differs from {b_where} {show(b)}")
        return a if a is not None else b

    def run(self, device_id: str | None) -> dict:
        doc = self.doc
        metadata = self.mapping(doc, "metadata", "metadata")
        annotations = self.mapping(metadata, "annotations", "metadata.annotations", required=False)
        raw_id = self.one_of(
            (doc.get("id"), "id"), (annotations.get("id"), "metadata.annotations.id")
        )
        self.id = raw_id = self.deployment_id(raw_id, "id")  # a failure below is this one's
        if "id" in doc and not UUID.fullmatch(raw_id):
            raise self.fail(
                "INVALID_DEPLOYMENT_ID", "id", f"{raw_id!r} is not a UUID (the 1.0 model's id)"
            )
        api = doc.get("apiVersion")
        if api is not None and api not in API_VERSIONS:
            raise self.fail(
                "UNSUPPORTED_API_VERSION",
                "apiVersion",
                f"{show(api)} is not supported (supported: {', '.join(API_VERSIONS)}, or none)",
            )
        if doc.get("kind") is not None and doc.get("kind") != KIND:
            raise self.fail("INVALID_FIELD", "kind", f"{show(doc.get('kind'))} is not {KIND}")
        self.device(metadata, device_id)
        labels = self.mapping(metadata, "labels", "metadata.labels", required=False)
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise self.fail(
                    "INVALID_FIELD", f"metadata.labels.{key}", "labels map strings to strings"
                )
        spec = self.mapping(doc, "spec", "spec")
        self.closed(spec, ("applicationId", "deploymentProfile", "parameters"), "spec")
        app = self.one_of(
            (spec.get("applicationId"), "spec.applicationId"),
            (annotations.get("applicationId"), "metadata.annotations.applicationId"),
        )
        if app is None:
            raise self.fail("MISSING_FIELD", "spec.applicationId", "required field is missing")
        if not isinstance(app, str) or not APPLICATION_ID.fullmatch(app):
            raise self.fail(
                "INVALID_APPLICATION_ID",
                "spec.applicationId",
                f"{show(app)} is not an application id (lower-case letters, digits and '-', "
                "at most 200 characters)",
            )
        profile = self.mapping(spec, "deploymentProfile", "spec.deploymentProfile")
        where = "spec.deploymentProfile"
        self.closed(profile, ("type", "components", "deviceConstraints"), where)
        self.mapping(profile, "deviceConstraints", f"{where}.deviceConstraints", required=False)
        kind = profile.get("type")
        if kind is None:
            raise self.fail("MISSING_FIELD", f"{where}.type", "required field is missing")
        if not isinstance(kind, str) or kind not in PROFILE_ALIASES:
            raise self.fail(
                "UNSUPPORTED_PROFILE",
                f"{where}.type",
                f"{show(kind)} is not a deployment type (compose, helm)",
            )
        profile_type = PROFILE_ALIASES[kind]
        components = profile.get("components")
        if isinstance(components, list):
            components = [self.component(i, c, profile_type) for i, c in enumerate(components)]
        parameters = spec.get("parameters", {})
        if isinstance(parameters, dict) and profile_type == "docker-compose":
            parameters = {name: self.parameter(p) for name, p in parameters.items()}
        return {
            "apiVersion": DRAFT_API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "annotations": {**annotations, "id": raw_id, "applicationId": app},
            },
            "spec": {
                "deploymentProfile": {"type": profile_type, "components": components},
                "parameters": {} if parameters is None else parameters,
            },
        }

    def device(self, metadata: Mapping, device_id: str | None) -> None:
        value = metadata.get("deviceId")
        if value is None:
            return
        where = "metadata.deviceId"
        if not isinstance(value, str) or len(value) > MAX_ID or not DEVICE_ID.fullmatch(value):
            raise self.fail("INVALID_FIELD", where, f"{show(value)} is not a device id")
        if device_id is not None and not matches_device(value, device_id):
            raise self.fail(
                "WRONG_DEVICE", where, f"{value!r} is not this device ({device_id!r}); refused"
            )

    def component(self, index: int, raw: Any, profile_type: str) -> Any:
        where = f"spec.deploymentProfile.components[{index}]"
        if not isinstance(raw, dict):
            return raw  # the draft parser names what is wrong with it
        self.closed(raw, ("name", "properties"), where)
        props = raw.get("properties")
        if not isinstance(props, dict) or "repository" not in props:
            return raw  # the draft shape (packageLocation), or broken: the draft parser says
        where = f"{where}.properties"
        repository, revision = props.get("repository"), props.get("revision")
        if not isinstance(repository, str) or not re.fullmatch(r"oci://\S{1,2040}", repository):
            raise self.fail("INVALID_FIELD", f"{where}.repository", "must be an oci:// reference")
        if revision is None:
            raise self.fail("MISSING_FIELD", f"{where}.revision", "required field is missing")
        if not isinstance(revision, str) or not SEMVER.fullmatch(revision):
            raise self.fail(
                "INVALID_FIELD",
                f"{where}.revision",
                f"{show(revision)} is not a SemVer 2.0 version without a leading v "
                "(quote it in YAML: '1.0.0')",
            )
        if props.get("wait") is not None and not isinstance(props["wait"], bool):
            raise self.fail("INVALID_FIELD", f"{where}.wait", "must be true or false")
        timeout = props.get("timeout")
        if timeout is not None and (not isinstance(timeout, str) or not TIMEOUT.fullmatch(timeout)):
            raise self.fail("INVALID_FIELD", f"{where}.timeout", "must look like 5m0s")
        if profile_type == "docker-compose":  # one string for the package store: repo:tag
            try:
                props = {**props, "packageLocation": oci.location(repository, revision)}
            except OciError as exc:
                raise self.fail("INVALID_FIELD", f"{where}.repository", exc.message) from None
        return {"name": raw.get("name"), "properties": props}

    def parameter(self, param: Any) -> Any:
        """A compose parameter with each plain pointer `NAME` written `ENV.NAME`."""
        if not isinstance(param, dict) or not isinstance(param.get("targets"), list):
            return param
        targets = []
        for target in param["targets"]:
            pointer = target.get("pointer") if isinstance(target, dict) else None
            if isinstance(pointer, str) and ENV_NAME.fullmatch(pointer):
                target = {**target, "pointer": f"ENV.{pointer}"}
            targets.append(target)
        return {**param, "targets": targets}


def normalize(doc: dict, source: str, device_id: str | None = None) -> dict:
    """The draft-shaped equivalent of the v1 document `doc`, or DesiredStateError (with the
    deployment id once it is known). `device_id` None skips the device check."""
    return _Normaliser(doc, source).run(device_id)
