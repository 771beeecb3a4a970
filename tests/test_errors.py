"""Errors decide scheduling: every error class is in exactly one family, every code too,
every code the package raises is declared (with what the user does), and docs/errors.md
is the table rendered from those declarations."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from margo_lite import errors
from tests.support import errortable

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = (errors.StalledError, errors.TransientError)


def error_classes() -> list[type[errors.MargoLiteError]]:
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.MargoLiteError) and c.__module__.startswith(errors.__name__ + ".")
    ]


def declared(cls: type) -> set[str]:
    """The codes `cls` may carry: its own and those its bases declare."""
    return {code for base in cls.__mro__ for code in vars(base).get("codes", {})}


def test_every_error_class_is_in_exactly_one_family():
    for cls in error_classes():
        if cls in errors.AREAS:
            assert sum(issubclass(cls, f) for f in FAMILIES) <= 1, cls
            continue
        assert sum(issubclass(cls, f) for f in FAMILIES) == 1, f"{cls.__name__}: one family"
        assert cls.code in declared(cls), f"{cls.__name__}: its default code is undeclared"


def test_every_code_is_in_exactly_one_family():
    families: dict[str, set[str]] = {}
    for cls in error_classes():
        for code, action in vars(cls).get("codes", {}).items():
            assert action.strip(), f"{cls.__name__}.{code}: say what the user does"
            families.setdefault(code, set()).add(errortable.family_name(cls))
    for code, (family, _) in errors.REPORT_CODES.items():
        families.setdefault(code, set()).add(errortable.family_name(family))
    assert families
    mixed = {code: f for code, f in families.items() if len(f) != 1}
    assert not mixed, f"codes in two families: {mixed}"


def raised_codes() -> list[tuple[str, int, str, str]]:
    """(file, line, class, code) of every `SomeError(..., code="X")` in the package."""
    names = {c.__name__ for c in error_classes()}
    found = []
    for path in sorted((ROOT / "margo_lite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in names:
                continue
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            rel = str(path.relative_to(ROOT))
            if code is None:
                found.append((rel, node.lineno, name, getattr(errors, name).code))
            elif isinstance(code, ast.Constant):
                found.append((rel, node.lineno, name, code.value))
    return found


def test_every_code_the_package_raises_is_declared_by_its_class():
    found = raised_codes()
    assert len(found) > 100  # the scan sees the package
    undeclared = [f for f in found if f[3] not in declared(getattr(errors, f[2]))]
    assert not undeclared, (
        f"declare these in margo_lite/errors/ (with what the user does): {undeclared}"
    )


def test_no_area_base_is_raised_itself():
    areas = {c.__name__ for c in errors.AREAS}
    direct = [f for f in raised_codes() if f[2] in areas]
    assert not direct, f"raise a class of a family instead: {direct}"


def test_the_family_of_a_rollback_follows_its_cause():
    cause = errors.ComposeError("services.web: bad", code="COMPOSE_INVALID")
    try:
        try:
            raise cause
        except errors.EngineError as exc:
            raise errors.EngineFailedError("rolled back", code="ROLLED_BACK") from exc
    except errors.EngineError as rolled:
        assert errors.family(rolled) is errors.StalledError
    assert errors.family(errors.EngineTransientError("x")) is errors.TransientError
    assert errors.family(ValueError("x")) is None


def test_the_docs_hold_the_rendered_table():
    page = (ROOT / "docs" / "errors.md").read_text()
    assert page == errortable.render(), (
        "docs/errors.md is stale: python -m tests.support.errortable > docs/errors.md"
    )


@pytest.mark.parametrize("cls", [errors.PolicyError, errors.ComposeError, errors.GitError])
def test_what_only_a_change_fixes_is_stalled(cls):
    assert errors.family(cls("x")) is errors.StalledError
