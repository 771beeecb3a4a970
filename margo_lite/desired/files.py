"""Every `ApplicationDeployment` in the files of a desired-state folder, parsed at once.

Pure: the caller passes every file below `git.path` as bytes; nothing here touches disk or
network. A document that breaks the contract fails only its own deployment: the error is
kept as a `DocumentFailure` (with the deployment id when it could be read) and every other
deployment goes on. Size and count limits bound what one poll may feed the parser; ids
equal but for case fail every document that uses them; documents of other kinds are
ignored, but a broken or misspelt deployment is a failure, never ignored (the planner
would remove it while it runs).
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from margo_lite import logs, yamlload
from margo_lite.desired.document import DocumentParser
from margo_lite.desired.model import (
    DEFAULT_LIMITS,
    DEPLOYMENT_ID,
    KIND,
    Deployment,
    DesiredState,
    DocumentFailure,
    Limits,
    is_v1,
)
from margo_lite.errors import DesiredStateError, InvalidYamlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logs.get(__name__)


def parse_files(
    files: Mapping[str, bytes],
    limits: Limits = DEFAULT_LIMITS,
    *,
    device_id: str | None = None,
    file_ids: Mapping[str, str] = types.MappingProxyType({}),
) -> DesiredState:
    """Every ApplicationDeployment in the `*.yaml`/`*.yml` files of `files`; never raises.

    Failures whose deployment id is unknown are logged here (the agent reports the rest).
    `files` maps posix paths relative to the desired-state folder to their bytes; other
    files (in-repository package content) are only read to digest packages. Documents in
    the Margo 1.0 shape are normalised first (`v1doc`; `device_id` checks their deviceId).
    `file_ids` names the deployment a file must hold (the WFM's manifest lists each
    document under its `deploymentId`): a document with another id fails that deployment
    with DEPLOYMENT_ID_MISMATCH, so a WFM cannot install or report under one name what it
    listed under another.
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
            if isinstance(doc, dict) and kind != KIND and not looks_like_deployment(doc):
                ignored.append((source, repr(kind)[:80]))
                continue
            listed = file_ids.get(path)
            try:
                if is_v1(doc):
                    from margo_lite import v1doc  # with the OCI references: a 1.0 document

                    doc = v1doc.normalize(doc, source, device_id)
                parsed.append(_listed_as(DocumentParser(doc, source, files).deployment(), listed))
            except DesiredStateError as exc:
                failures.append(DocumentFailure(source, listed or exc.deployment_id, exc))
    deployments = _drop_duplicates(parsed, failures)
    _log_ignored(ignored, deployments)
    for f in failures:
        if f.deployment_id is None:
            log.warning("%s; its deployment id is unknown, so no deployment is removed", f.error)
    return DesiredState(tuple(deployments), tuple(failures))


def looks_like_deployment(doc: dict) -> bool:
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
    import difflib  # only for a kind that is not ApplicationDeployment

    return isinstance(kind, str) and (
        difflib.SequenceMatcher(None, kind.lower(), KIND.lower()).ratio() >= 0.8
    )


def _listed_as(deployment: Deployment, listed: str | None) -> Deployment:
    """The deployment, when its id is the one its source listed it under (or none)."""
    if listed is None or deployment.id == listed:
        return deployment
    raise DesiredStateError(
        f"the document's id {deployment.id!r} is not the deploymentId {listed!r} it is "
        "listed under; refused",
        code="DEPLOYMENT_ID_MISMATCH",
        source=deployment.source,
        field="id",
        deployment_id=listed,
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
