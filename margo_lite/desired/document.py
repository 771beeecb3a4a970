"""One `ApplicationDeployment` document validated into a `Deployment`.

`DocumentParser` checks the document field by field (metadata, profile, components,
package and key locations) and builds each `Component` with its digest; the parameter
targets are resolved by the `Parameters` base class, the field readers (and the coded
`DesiredStateError` naming source, field and deployment id) come from `Fields`. Pure:
in-repository files are given as bytes.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType

from margo_lite import logs, yamlload
from margo_lite.constants import COMPOSE_FILE_NAMES
from margo_lite.desired import values
from margo_lite.desired.model import (
    API_VERSIONS,
    APPLICATION_ID,
    COMPONENT_NAME,
    COMPOSE,
    DEPENDS_ON,
    DEPLOYMENT_ID,
    KIND,
    MAX_COMPONENTS,
    MAX_NAME,
    PROFILE_ALIASES,
    PROFILE_TYPES,
    Component,
    Deployment,
)
from margo_lite.desired.parameters import Parameters
from margo_lite.errors import DesiredStateError, InvalidYamlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class DocumentParser(Parameters):
    """Validates one document into a `Deployment`, or raises a coded `DesiredStateError`."""

    def deployment(self) -> Deployment:
        doc = self.doc
        if not isinstance(doc, dict):
            raise self.fail(
                "NOT_A_MAPPING", "", f"a document must be a mapping, not {values.kind(doc)}"
            )
        metadata = self.mapping(doc, "metadata", "metadata")
        annotations = self.mapping(metadata, "annotations", "metadata.annotations")
        self.id = self.deployment_id(annotations.get("id"), "metadata.annotations.id")
        api = doc.get("apiVersion")
        if api is None:
            raise self.fail("MISSING_FIELD", "apiVersion", "required field is missing")
        if api not in API_VERSIONS:
            raise self.fail(
                "UNSUPPORTED_API_VERSION",
                "apiVersion",
                f"{values.show(api)} is not supported (supported: {', '.join(API_VERSIONS)})",
            )
        if doc.get("kind") is None:
            raise self.fail("MISSING_FIELD", "kind", "required field is missing")
        if doc.get("kind") != KIND:
            raise self.fail(
                "INVALID_FIELD", "kind", f"{values.show(doc.get('kind'))} is not {KIND}"
            )
        application_id = self.string(
            annotations, "applicationId", "metadata.annotations.applicationId"
        )
        assert application_id is not None
        if not APPLICATION_ID.fullmatch(application_id):
            raise self.fail(
                "INVALID_APPLICATION_ID",
                "metadata.annotations.applicationId",
                f"{values.show(application_id)} is not an application id (lower-case letters, "
                "digits and '-', at most 200 characters)",
            )
        name = self.string(metadata, "name", "metadata.name", limit=MAX_NAME)
        namespace = self.string(metadata, "namespace", "metadata.namespace", limit=MAX_NAME)
        depends_on = self.depends_on(annotations)
        spec = self.mapping(doc, "spec", "spec")
        profile = self.mapping(spec, "deploymentProfile", "spec.deploymentProfile")
        profile_type = self.string(profile, "type", "spec.deploymentProfile.type")
        profile_type = PROFILE_ALIASES.get(profile_type or "", profile_type)  # compose, helm too
        if profile_type not in PROFILE_TYPES:
            raise self.fail(
                "UNSUPPORTED_PROFILE",
                "spec.deploymentProfile.type",
                f"{values.show(profile_type)} is not a profile type "
                f"(known: {', '.join(PROFILE_TYPES)})",
            )
        raw_components = self.component_list(profile)
        if "parameters" not in spec:
            raise self.fail("MISSING_FIELD", "spec.parameters", "required (it may be empty: {})")
        parameters = self.mapping(spec, "parameters", "spec.parameters", required=False)
        names = [c["name"] for c in raw_components]
        env, overlays = self.resolve(parameters, names, profile_type)
        components = tuple(
            self.component(i, raw, profile_type, env[raw["name"]], overlays[raw["name"]])
            for i, raw in enumerate(raw_components)
        )
        assert name is not None and namespace is not None
        digest = values.digest(
            {
                "id": self.id,
                "applicationId": application_id,
                "name": name,
                "namespace": namespace,
                "type": profile_type,
                "dependsOn": list(depends_on),
                "components": [[c.name, c.digest] for c in components],
            }
        )
        return Deployment(
            id=self.id,
            application_id=application_id,
            name=name,
            namespace=namespace,
            profile_type=profile_type,
            components=components,
            depends_on=depends_on,
            source=self.source,
            digest=digest,
        )

    def depends_on(self, annotations: Mapping) -> tuple[str, ...]:
        where = f"metadata.annotations.{DEPENDS_ON}"
        value = annotations.get(DEPENDS_ON)
        if value is None:
            return ()
        if not isinstance(value, str):
            raise self.fail("INVALID_FIELD", where, "must be a string of comma-separated ids")
        ids: list[str] = []
        for part in value.split(","):
            dep = part.strip()
            if not dep:
                continue
            if not DEPLOYMENT_ID.fullmatch(dep):
                raise self.fail("INVALID_FIELD", where, f"{dep!r} is not a deployment id")
            if dep not in ids:
                ids.append(dep)
        return tuple(ids)

    def component_list(self, profile: Mapping) -> list[dict]:
        where = "spec.deploymentProfile.components"
        raw = profile.get("components")
        if raw is None:
            raise self.fail("MISSING_FIELD", where, "required list is missing")
        if not isinstance(raw, list) or not raw:
            raise self.fail("INVALID_FIELD", where, "must be a non-empty list of components")
        if len(raw) > MAX_COMPONENTS:
            raise self.fail("INVALID_FIELD", where, f"more than {MAX_COMPONENTS} components")
        seen: set[str] = set()
        for i, item in enumerate(raw):
            at = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise self.fail("NOT_A_MAPPING", at, f"must be a mapping, not {values.kind(item)}")
            name = self.string(item, "name", f"{at}.name")
            assert name is not None
            if not COMPONENT_NAME.fullmatch(name):
                raise self.fail(
                    "INVALID_FIELD",
                    f"{at}.name",
                    f"{name!r} is not a component name (letters, digits, '.', '_', '-', "
                    "starting with a letter or digit, at most 128 characters)",
                )
            if name.lower() in seen:
                raise self.fail("DUPLICATE_COMPONENT", f"{at}.name", f"{name!r} is listed twice")
            seen.add(name.lower())
        return raw

    def component(
        self,
        index: int,
        raw: dict,
        profile_type: str,
        env: dict[str, str],
        overlays: dict[str, Any],
    ) -> Component:
        at = f"spec.deploymentProfile.components[{index}].properties"
        props = self.mapping(raw, "properties", at)
        package = key = None
        package_files: dict[str, str] = {}
        key_files: dict[str, str] = {}
        if profile_type == COMPOSE:
            package = self.string(props, "packageLocation", f"{at}.packageLocation", limit=2048)
            key = self.string(props, "keyLocation", f"{at}.keyLocation", required=False, limit=2048)
            assert package is not None
            package, package_files = self.location(package, f"{at}.packageLocation")
            if key is not None:
                key, key_files = self.location(key, f"{at}.keyLocation")
            if overlays and package_files:
                self.check_overlays(package, package_files, overlays, f"{at}.packageLocation")
        else:
            self.string(props, "repository", f"{at}.repository", limit=2048)
            for name in ("revision", "timeout"):
                if props.get(name) is not None and not isinstance(props[name], str | int | float):
                    raise self.fail("INVALID_FIELD", f"{at}.{name}", "must be a string or number")
            wait = props.get("wait")  # "true"/"false" strings: the spec's own pages use them
            if wait is not None and not isinstance(wait, bool) and wait not in ("true", "false"):
                raise self.fail("INVALID_FIELD", f"{at}.wait", "must be true or false")
        frozen_props = values.freeze(props)
        digest = values.digest(
            {
                "type": profile_type,
                "name": raw["name"],
                "properties": props,
                "env": env,
                "overlays": overlays,
                "package": package_files,
                "key": key_files,
            }
        )
        return Component(
            name=raw["name"],
            package_location=package,
            key_location=key,
            properties=frozen_props,
            env=MappingProxyType(dict(env)),
            overlays=MappingProxyType(dict(overlays)),  # plain values, applied as validated
            digest=digest,
            package_in_repo=bool(package_files),
            key_in_repo=bool(key_files),
        )

    def location(self, value: str, where: str) -> tuple[str, dict[str, str]]:
        """A URL as given, or an in-repository path normalised, with its files' digests."""
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in ("http", "https", "oci"):
                raise self.fail(
                    "INVALID_FIELD",
                    where,
                    f"scheme {scheme!r} is not supported (http, https, oci, or a path in the "
                    "desired-state folder)",
                )
            try:
                parts = urllib.parse.urlsplit(value)
                # user:password, or a lone token in the user part
                logs.register_secret(parts.password or parts.username)
            except ValueError:
                raise self.fail("INVALID_FIELD", where, "not a valid URL") from None
            return value, {}
        path = value.strip()
        while path.startswith("./"):
            path = path[2:]
        path = path.rstrip("/")
        parts = path.split("/")
        if (
            value.startswith("/")
            or "\\" in value
            or "\x00" in value
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise self.fail(
                "INVALID_FIELD",
                where,
                f"{value!r} is neither an http(s) URL nor a relative path inside the "
                "desired-state folder",
            )
        if path in self.files:
            return path, {path: hashlib.sha256(self.files[path]).hexdigest()}
        prefix = path + "/"
        below = {
            p: hashlib.sha256(data).hexdigest()
            for p, data in self.files.items()
            if p.startswith(prefix)
        }
        if not below:
            raise self.fail(
                "MISSING_PACKAGE", where, f"no file or folder {path!r} in the desired-state folder"
            )
        return path, below

    def check_overlays(
        self,
        package: str,
        package_files: Mapping[str, str],
        overlays: Mapping[str, Any],
        where: str,
    ) -> None:
        """Apply overlays to an in-repository compose file now, so a bad pointer fails early."""
        if package in package_files:
            compose = package if package.endswith((".yaml", ".yml")) else None
        else:
            compose = next(
                (f"{package}/{n}" for n in COMPOSE_FILE_NAMES if f"{package}/{n}" in self.files),
                None,
            )
        if compose is None:
            return  # a tarball: checked when the package is unpacked
        try:
            document = yamlload.load_one(self.files[compose])
        except InvalidYamlError:
            return  # the package step reports a broken compose file with its own code
        try:
            values.apply_overlays(document, overlays)
        except DesiredStateError as exc:
            raise self.fail(exc.code, where, f"{compose}: {exc.message}") from None
