"""The desired state: `ApplicationDeployment` documents parsed into an immutable model.

Pure: the caller passes every file below `git.path` as bytes; nothing here touches disk or
network. A document that breaks the contract fails only its own deployment: the error is
kept as a `DocumentFailure` (with the deployment id when it could be read) and every other
deployment goes on. Parameters are resolved here, per component, into environment
variables and compose overlays, and each component gets a digest of everything that
defines it (spec, resolved parameters, bytes of an in-repository package), so the planner
can leave anything unchanged untouched.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from margo_lite import jsonvalue, logs, v1doc, yamlload
from margo_lite import pointer as pointers
from margo_lite.errors import ComposeError, DesiredStateError, InvalidYamlError

log = logs.get(__name__)

API_VERSIONS = ("application.margo.org/v1alpha1",)
KIND = "ApplicationDeployment"
COMPOSE = "docker-compose"
HELM = "helm.v3"
PROFILE_TYPES = (COMPOSE, HELM)
#: Optional annotation: comma-separated ids of deployments that must be Installed first.
DEPENDS_ON = "margo-lite.io/depends-on"

#: Safe as a file name, a container label and part of a compose project name.
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
APPLICATION_ID = re.compile(r"[a-z0-9-]{1,200}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
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

    def failed_ids(self) -> frozenset[str]:
        return frozenset(f.deployment_id for f in self.failures if f.deployment_id)


# --- entry point ---------------------------------------------------------------------------


def parse_files(
    files: Mapping[str, bytes], limits: Limits = DEFAULT_LIMITS, *, device_id: str | None = None
) -> DesiredState:
    """Every ApplicationDeployment in the `*.yaml`/`*.yml` files of `files`; never raises.

    Failures whose deployment id is unknown are logged here (the agent reports the rest).
    `files` maps posix paths relative to the desired-state folder to their bytes; other
    files (in-repository package content) are only read to digest packages. Documents in
    the Margo 1.0 shape are normalised first (`v1doc`; `device_id` checks their deviceId).
    """
    failures: list[DocumentFailure] = []
    parsed: list[Deployment] = []
    ignored: list[tuple[str, str]] = []
    total = 0
    documents = 0
    for path in sorted(p for p in files if p.endswith((".yaml", ".yml"))):
        data = files[path]
        if len(data) <= limits.max_file_bytes:  # a refused file does not starve the others
            total += len(data)
        if len(data) > limits.max_file_bytes or total > limits.max_total_bytes:
            too_big = len(data) > limits.max_file_bytes
            limit = limits.max_file_bytes if too_big else limits.max_total_bytes
            what = "file is larger than" if too_big else "YAML files together exceed"
            error = DesiredStateError(
                f"{what} {limit} bytes; not parsed", code="YAML_TOO_LARGE", source=path
            )
            failures.append(DocumentFailure(path, None, error))
            continue
        try:
            docs = yamlload.load_all(data, limits.yaml)
        except InvalidYamlError as exc:
            error = DesiredStateError(exc.message, code=exc.code, source=path)
            failures.append(DocumentFailure(path, None, error))
            continue
        for index, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            source = f"{path} document {index}"
            documents += 1
            if documents > limits.max_documents:
                error = DesiredStateError(
                    f"more than {limits.max_documents} documents in the desired state",
                    code="YAML_TOO_COMPLEX",
                    source=source,
                )
                failures.append(DocumentFailure(source, _peek_id(doc), error))
                continue
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if isinstance(doc, dict) and kind != KIND and not _looks_like_deployment(doc):
                ignored.append((source, repr(kind)[:80]))
                continue
            try:
                if v1doc.is_v1(doc):
                    doc = v1doc.normalize(doc, source, device_id)
                parsed.append(_Parser(doc, source, files).deployment())
            except DesiredStateError as exc:
                failures.append(DocumentFailure(source, exc.deployment_id, exc))
    deployments = _drop_duplicates(parsed, failures)
    _log_ignored(ignored, deployments)
    for f in failures:
        if f.deployment_id is None:
            log.warning("%s; its deployment id is unknown, so no deployment is removed", f.error)
    return DesiredState(tuple(deployments), tuple(failures))


def _looks_like_deployment(doc: dict) -> bool:
    """A document that means to be a deployment but is broken (a failure), as opposed to a
    document of another kind (ignored): it has a deployment profile, or a Margo application
    apiVersion with no kind or a misspelt one. Ignoring a misspelt deployment would make the
    planner remove it while it runs."""
    spec = doc.get("spec")
    if isinstance(spec, dict) and "deploymentProfile" in spec:
        return True
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not (isinstance(api, str) and api.startswith("application.margo.org/")):
        return False
    if kind is None:
        return True
    return isinstance(kind, str) and (
        difflib.SequenceMatcher(None, kind.lower(), KIND.lower()).ratio() >= 0.8
    )


def _peek_id(doc: Any) -> str | None:
    """The deployment id of a document if it is readable and valid, else None."""
    try:
        value = doc["metadata"]["annotations"]["id"]
    except (KeyError, TypeError, IndexError):
        return None
    return value if isinstance(value, str) and DEPLOYMENT_ID.fullmatch(value) else None


def _drop_duplicates(parsed: list[Deployment], failures: list[DocumentFailure]) -> list[Deployment]:
    """Ids equal ignoring case fail every document that uses them: no guessing which wins."""
    sources: dict[str, list[str]] = {}
    for d in parsed:
        sources.setdefault(d.id.lower(), []).append(d.source)
    for f in failures:
        if f.deployment_id is not None:
            sources.setdefault(f.deployment_id.lower(), []).append(f.source)
    kept = []
    for d in parsed:
        where = sources[d.id.lower()]
        if len(where) == 1:
            kept.append(d)
            continue
        others = ", ".join(s for s in where if s != d.source)
        error = DesiredStateError(
            f"deployment id {d.id!r} is also used by {others}",
            code="DUPLICATE_DEPLOYMENT_ID",
            source=d.source,
            field="metadata.annotations.id",
            deployment_id=d.id,
        )
        failures.append(DocumentFailure(d.source, d.id, error))
    return kept


def _log_ignored(ignored: list[tuple[str, str]], deployments: list[Deployment]) -> None:
    packages = [
        c.package_location
        for d in deployments
        for c in d.components
        if c.package_in_repo and c.package_location
    ]
    for source, kind in ignored:
        path = source.rsplit(" document ", 1)[0]
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in packages):
            continue  # a compose file of an in-repository package
        log.info("%s: kind %s is not %s; ignored", source, kind, KIND)


# --- one document --------------------------------------------------------------------------


class _Parser:
    """Validates one document; every error names the source, the field and the id if known."""

    def __init__(self, doc: Any, source: str, files: Mapping[str, bytes]) -> None:
        self.doc = doc
        self.source = source
        self.files = files
        self.id: str | None = None

    def fail(self, code: str, where: str, message: str) -> DesiredStateError:
        return DesiredStateError(
            message, code=code, source=self.source, field=where, deployment_id=self.id
        )

    def mapping(self, parent: Mapping, key: str, where: str, *, required: bool = True) -> dict:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.fail("MISSING_FIELD", where, "required mapping is missing")
            return {}
        if not isinstance(value, dict):
            raise self.fail("NOT_A_MAPPING", where, f"must be a mapping, not {_kind(value)}")
        return value

    def string(
        self, parent: Mapping, key: str, where: str, *, required: bool = True, limit: int = 4096
    ) -> str | None:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.fail("MISSING_FIELD", where, "required field is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                "INVALID_FIELD", where, f"must be a non-empty string, not {_show(value)}"
            )
        if len(value) > limit:
            raise self.fail("INVALID_FIELD", where, f"longer than {limit} characters")
        return value

    def deployment(self) -> Deployment:
        doc = self.doc
        if not isinstance(doc, dict):
            raise self.fail("NOT_A_MAPPING", "", f"a document must be a mapping, not {_kind(doc)}")
        metadata = self.mapping(doc, "metadata", "metadata")
        annotations = self.mapping(metadata, "annotations", "metadata.annotations")
        raw_id = annotations.get("id")
        if raw_id is None:
            raise self.fail("MISSING_FIELD", "metadata.annotations.id", "required field is missing")
        if not isinstance(raw_id, str) or not DEPLOYMENT_ID.fullmatch(raw_id):
            raise self.fail(
                "INVALID_DEPLOYMENT_ID",
                "metadata.annotations.id",
                f"{_show(raw_id)} is not a deployment id (letters, digits, '.', '_', '-', "
                "starting with a letter or digit, at most 128 characters)",
            )
        self.id = raw_id
        api = doc.get("apiVersion")
        if api is None:
            raise self.fail("MISSING_FIELD", "apiVersion", "required field is missing")
        if api not in API_VERSIONS:
            raise self.fail(
                "UNSUPPORTED_API_VERSION",
                "apiVersion",
                f"{_show(api)} is not supported (supported: {', '.join(API_VERSIONS)})",
            )
        if doc.get("kind") is None:
            raise self.fail("MISSING_FIELD", "kind", "required field is missing")
        if doc.get("kind") != KIND:
            raise self.fail("INVALID_FIELD", "kind", f"{_show(doc.get('kind'))} is not {KIND}")
        application_id = self.string(
            annotations, "applicationId", "metadata.annotations.applicationId"
        )
        assert application_id is not None
        if not APPLICATION_ID.fullmatch(application_id):
            raise self.fail(
                "INVALID_APPLICATION_ID",
                "metadata.annotations.applicationId",
                f"{_show(application_id)} is not an application id (lower-case letters, digits "
                "and '-', at most 200 characters)",
            )
        name = self.string(metadata, "name", "metadata.name", limit=MAX_NAME)
        namespace = self.string(metadata, "namespace", "metadata.namespace", limit=MAX_NAME)
        depends_on = self.depends_on(annotations)
        spec = self.mapping(doc, "spec", "spec")
        profile = self.mapping(spec, "deploymentProfile", "spec.deploymentProfile")
        profile_type = self.string(profile, "type", "spec.deploymentProfile.type")
        profile_type = v1doc.TYPES.get(profile_type or "", profile_type)  # compose, helm too
        if profile_type not in PROFILE_TYPES:
            raise self.fail(
                "UNSUPPORTED_PROFILE",
                "spec.deploymentProfile.type",
                f"{_show(profile_type)} is not a profile type (known: {', '.join(PROFILE_TYPES)})",
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
        digest = _digest(
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
                raise self.fail("NOT_A_MAPPING", at, f"must be a mapping, not {_kind(item)}")
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

    def resolve(
        self, parameters: Mapping, names: list[str], profile_type: str
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
        """Environment variables and overlays per component, from `spec.parameters`."""
        env: dict[str, dict[str, str]] = {n: {} for n in names}
        overlays: dict[str, dict[str, Any]] = {n: {} for n in names}
        setters: dict[tuple[str, str], str] = {}  # (component, pointer) -> parameter
        below: dict[tuple[str, str], tuple[str, str]] = {}  # (component, prefix) -> setter
        if len(parameters) > MAX_PARAMETERS:
            raise self.fail("INVALID_FIELD", "spec.parameters", f"more than {MAX_PARAMETERS}")
        for pname, param in parameters.items():
            at = f"spec.parameters.{pname}"
            if not isinstance(param, dict):
                raise self.fail("NOT_A_MAPPING", at, f"must be a mapping, not {_kind(param)}")
            if "value" not in param:
                raise self.fail("MISSING_FIELD", f"{at}.value", "required field is missing")
            try:  # plain JSON only: what is validated is what is applied, unchanged
                value = jsonvalue.plain(param["value"], f"{at}.value")
            except ComposeError as exc:
                message = exc.message.removeprefix(f"{at}.value: ")
                raise self.fail(exc.code, f"{at}.value", message) from None
            targets = param.get("targets")
            if targets is None:
                raise self.fail("MISSING_FIELD", f"{at}.targets", "required list is missing")
            if not isinstance(targets, list) or not targets:
                raise self.fail("INVALID_FIELD", f"{at}.targets", "must be a non-empty list")
            for ti, target in enumerate(targets):
                tat = f"{at}.targets[{ti}]"
                if not isinstance(target, dict):
                    raise self.fail("NOT_A_MAPPING", tat, f"must be a mapping, not {_kind(target)}")
                pointer = self.string(target, "pointer", f"{tat}.pointer", limit=1024)
                assert pointer is not None
                comps = target.get("components")
                if comps is None:
                    raise self.fail(
                        "MISSING_FIELD", f"{tat}.components", "required list is missing"
                    )
                if not isinstance(comps, list) or not comps:
                    raise self.fail(
                        "INVALID_FIELD", f"{tat}.components", "must be a non-empty list of names"
                    )
                for ci, comp in enumerate(comps):
                    cat = f"{tat}.components[{ci}]"
                    if not isinstance(comp, str) or comp not in env:
                        raise self.fail(
                            "UNKNOWN_COMPONENT_IN_PARAMETER",
                            cat,
                            f"{_show(comp)} is not a component of this deployment "
                            f"(components: {', '.join(names)})",
                        )
                    self.apply_target(
                        pname,
                        pointer,
                        value,
                        comp,
                        profile_type,
                        env,
                        overlays,
                        setters,
                        below,
                        tat,
                    )
        return env, overlays

    def apply_target(
        self,
        pname: str,
        pointer: str,
        value: Any,
        comp: str,
        profile_type: str,
        env: dict[str, dict[str, str]],
        overlays: dict[str, dict[str, Any]],
        setters: dict[tuple[str, str], str],
        below: dict[tuple[str, str], tuple[str, str]],
        at: str,
    ) -> None:
        where = f"{at}.pointer"
        if pointer.startswith("ENV."):
            var = pointer[4:]
            if profile_type != COMPOSE:
                raise self.fail(
                    "UNSUPPORTED_POINTER", where, f"ENV pointers apply to {COMPOSE} components only"
                )
            if not ENV_NAME.fullmatch(var):
                raise self.fail(
                    "UNSUPPORTED_POINTER",
                    where,
                    f"{pointer!r}: {var!r} is not an environment variable name",
                )
            if value is None or isinstance(value, dict | list):
                raise self.fail(
                    "INVALID_FIELD",
                    f"spec.parameters.{pname}.value",
                    f"an ENV value must be a string, number or boolean, not {_kind(value)}",
                )
            key = (comp, pointer)
            if key in setters and setters[key] != pname:
                raise self.fail(
                    "CONFLICTING_PARAMETERS",
                    where,
                    f"parameters {setters[key]!r} and {pname!r} both set {pointer} for {comp!r}",
                )
            setters[key] = pname
            env[comp][var] = _env_string(value)
            return
        if profile_type == COMPOSE:
            try:
                segments = list(pointers.parse(pointer))
            except ComposeError as exc:
                raise self.fail(exc.code, where, exc.message) from None
        else:  # helm values: the same segments, any root
            segments = pointer.split(".")
            if not all(pointers.SEGMENT.fullmatch(s) for s in segments) or len(segments) < 2:
                raise self.fail(
                    "UNSUPPORTED_POINTER",
                    where,
                    f"{pointer!r} is neither ENV.NAME nor a dotted path like services.web.image",
                )
        # Overlapping paths would make the result depend on the order of application.
        clash = None
        if setters.get((comp, pointer), pname) != pname:
            clash = (pointer, setters[(comp, pointer)])
        for n in range(1, len(segments)):
            prefix = ".".join(segments[:n])
            if (comp, prefix) in setters:
                clash = (prefix, setters[(comp, prefix)])
        clash = clash or below.get((comp, pointer))
        if clash is not None:
            raise self.fail(
                "CONFLICTING_PARAMETERS",
                where,
                f"parameters {clash[1]!r} and {pname!r} set overlapping paths "
                f"{clash[0]} and {pointer} of {comp!r}",
            )
        for n in range(1, len(segments)):
            below.setdefault((comp, ".".join(segments[:n])), (pointer, pname))
        setters[(comp, pointer)] = pname
        overlays[comp][pointer] = value

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
        frozen_props = _freeze(props)
        digest = _digest(
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
            apply_overlays(document, overlays)
        except DesiredStateError as exc:
            raise self.fail(exc.code, where, f"{compose}: {exc.message}") from None


# --- overlays ------------------------------------------------------------------------------


def apply_overlays(document: Any, overlays: Mapping[str, Any]) -> Any:
    """A copy of a compose document with each dotted pointer set to its value (the one
    grammar of `margo_lite.pointer`, as every package gets it at apply)."""
    try:
        return pointers.apply(thaw(document), {k: thaw(v) for k, v in overlays.items()})
    except ComposeError as exc:
        raise DesiredStateError(exc.message, code=exc.code) from None


# --- values --------------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (for YAML or JSON output) from a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """A JSON-able form that keeps types apart (1 vs "1") and sorts any kind of key."""
    if isinstance(value, Mapping):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return {"m": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return {"s": sorted((_canonical(v) for v in value), key=json.dumps)}
    if value is None or isinstance(value, str):
        return value
    return {type(value).__name__: repr(value)}


def _digest(value: Any) -> str:
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_kind = yamlload.kind_of


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "DEFAULT_LIMITS",
    "DEPENDS_ON",
    "Component",
    "Deployment",
    "DesiredState",
    "DocumentFailure",
    "Limits",
    "apply_overlays",
    "parse_files",
    "thaw",
]
