"""The `spec.parameters` of a document resolved per component: environment and overlays.

Each parameter's value goes to every target it names: an `ENV.NAME` pointer becomes an
environment variable of the component (compose only), a dotted pointer an overlay of its
compose document (or Helm values). Two parameters that set the same or overlapping paths
of one component fail the document: the result must not depend on the order of
application. `Fields` is the base of the document parser: the readers of one document's
fields and its coded errors.
"""

from __future__ import annotations

from collections.abc import Mapping

from margo_lite import jsonvalue
from margo_lite import pointer as pointers
from margo_lite.desired import values
from margo_lite.desired.model import COMPOSE, DEPLOYMENT_ID, ENV_NAME, MAX_PARAMETERS
from margo_lite.errors import ComposeError, DesiredStateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Fields:
    """Reads fields of one document; every error names the source, the field and the id if known."""

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
            raise self.fail("NOT_A_MAPPING", where, f"must be a mapping, not {values.kind(value)}")
        return value

    def deployment_id(self, raw_id: Any, where: str) -> str:
        """The deployment's id, read at `where`: required, and safe as a name and in a path."""
        if raw_id is None:
            raise self.fail("MISSING_FIELD", where, "required field is missing")
        if not isinstance(raw_id, str) or not DEPLOYMENT_ID.fullmatch(raw_id):
            raise self.fail(
                "INVALID_DEPLOYMENT_ID",
                where,
                f"{values.show(raw_id)} is not a deployment id (letters, digits, '.', '_', '-', "
                "starting with a letter or digit, at most 128 characters)",
            )
        return raw_id

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
                "INVALID_FIELD", where, f"must be a non-empty string, not {values.show(value)}"
            )
        if len(value) > limit:
            raise self.fail("INVALID_FIELD", where, f"longer than {limit} characters")
        return value


class Parameters(Fields):
    """Resolves the parameters of one document (see the module docstring)."""

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
                raise self.fail("NOT_A_MAPPING", at, f"must be a mapping, not {values.kind(param)}")
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
                    raise self.fail(
                        "NOT_A_MAPPING", tat, f"must be a mapping, not {values.kind(target)}"
                    )
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
                            f"{values.show(comp)} is not a component of this deployment "
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
                    f"an ENV value must be a string, number or boolean, not {values.kind(value)}",
                )
            key = (comp, pointer)
            if key in setters and setters[key] != pname:
                raise self.fail(
                    "CONFLICTING_PARAMETERS",
                    where,
                    f"parameters {setters[key]!r} and {pname!r} both set {pointer} for {comp!r}",
                )
            setters[key] = pname
            env[comp][var] = values.env_string(value)
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
