"""Value classes: the part of `dataclasses` margo-lite uses, without its cost at start-up.

`dataclasses` imports `inspect` (with `ast` and `dis`) and compiles five or six methods for
every class. On the agent's path that was about 1.1 MiB of a 25 MiB process and a fifth of
its start-up (docs/proof.md). Here one `__init__` is compiled per class; equality, hashing,
`repr` and the frozen guard are shared functions over the class's field names.

The spelling is the standard library's, for the subset in use: `@dataclass`,
`@dataclass(frozen=True)`, `field(default=, default_factory=, init=, repr=, compare=, metadata=)`,
`fields`, `replace`, `is_dataclass`, `FrozenInstanceError`. Annotations are read as written
(every module defers them), so a `ClassVar[...]` annotation is not a field.
"""

from __future__ import annotations

import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

_FIELDS = "__valueclass_fields__"
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen value was set or deleted."""


class Field:
    """One field: its name, annotation, default (or factory) and what it takes part in."""

    __slots__ = (
        "compare",
        "default",
        "default_factory",
        "init",
        "metadata",
        "name",
        "repr",
        "type",
    )

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,
        compare: bool,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare
        self.metadata = _EMPTY if metadata is None else types.MappingProxyType(dict(metadata))

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,
    compare: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """A field with more than a plain default, as `dataclasses.field`."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, init, repr, compare, metadata)


def dataclass(cls: type | None = None, /, *, frozen: bool = False) -> Any:
    """Give `cls` an `__init__`, `__repr__`, `__eq__` (and `__hash__` when frozen)."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def fields(value: Any) -> tuple[Field, ...]:
    """The fields of a value class or of one of its values, in order."""
    try:
        return getattr(value, _FIELDS)
    except AttributeError:
        raise TypeError("must be called with a value class or one of its values") from None


def is_dataclass(value: Any) -> bool:
    return hasattr(value, _FIELDS)


def replace(value: Any, /, **changes: Any) -> Any:
    """A new value of the same class with `changes`; the other init fields are kept."""
    for f in fields(value):
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name} is not set by __init__ and cannot be replaced")
        elif f.name not in changes:
            changes[f.name] = getattr(value, f.name)
    return value.__class__(**changes)


def _build(cls: type, frozen: bool) -> type:
    if "__post_init__" in cls.__dict__:  # not in the subset: refused, never silently skipped
        raise TypeError(f"{cls.__qualname__}: __post_init__ is not supported")
    inherited = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _FIELDS, ()):
            inherited[f.name] = f
    own = {}
    # `inspect.get_annotations` would load the module this one exists to avoid
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        own[name] = _declared(cls, name, annotation)
    every = tuple({**inherited, **own}.values())
    setattr(cls, _FIELDS, every)
    explicit_hash = cls.__dict__.get("__hash__") is not None  # `__eq__` alone sets it to None
    _add(cls, "__init__", _init(cls, every, frozen))
    _add(cls, "__repr__", _repr(tuple(f.name for f in every if f.repr)))
    compared = tuple(f.name for f in every if f.compare)
    _add(cls, "__eq__", _eq(compared))
    if frozen:
        _add(cls, "__setattr__", _refuse_set)
        _add(cls, "__delattr__", _refuse_delete)
    if not explicit_hash:  # frozen: hashed by value; mutable: not hashable, as `dataclasses`
        cls.__hash__ = _hash(compared) if frozen else None  # type: ignore
    cls.__match_args__ = tuple(f.name for f in every if f.init)  # type: ignore[attr-defined]
    return cls


def _declared(cls: type, name: str, annotation: Any) -> Field:
    value = cls.__dict__.get(name, MISSING)
    f = value if isinstance(value, Field) else Field(value, MISSING, True, True, True, None)
    f.name, f.type = name, annotation
    if isinstance(f.default, list | dict | set):
        raise ValueError(f"mutable default {type(f.default).__name__} for field {name}")
    if f.default is MISSING:
        if isinstance(value, Field):
            delattr(cls, name)
    else:
        setattr(cls, name, f.default)
    return f


def _add(cls: type, name: str, function: Any) -> None:
    """Set a method unless the class body wrote its own, as `dataclasses` does."""
    if name not in cls.__dict__:
        setattr(cls, name, function)


def _init(cls: type, every: tuple[Field, ...], frozen: bool) -> Any:
    """Compile `__init__(self, a, b=<default>, ...)`: positional and keyword, as declared."""
    scope: dict[str, Any] = {"_set": object.__setattr__, "_MISSING": MISSING}
    params, body, defaulted = ["self"], [], False
    for f in every:
        value = f.name
        if f.default is not MISSING:
            scope[f"_d_{f.name}"] = f.default
        if f.default_factory is not MISSING:
            scope[f"_f_{f.name}"] = f.default_factory
        if f.init:
            if f.default is not MISSING:
                params.append(f"{f.name}=_d_{f.name}")
            elif f.default_factory is not MISSING:
                params.append(f"{f.name}=_MISSING")
                value = f"_f_{f.name}() if {f.name} is _MISSING else {f.name}"
            elif defaulted:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
            else:
                params.append(f.name)
            defaulted = defaulted or f.default is not MISSING or f.default_factory is not MISSING
        elif f.default is not MISSING:
            value = f"_d_{f.name}"
        elif f.default_factory is not MISSING:
            value = f"_f_{f.name}()"
        else:
            continue
        body.append(f"_set(self, {f.name!r}, {value})" if frozen else f"self.{f.name} = {value}")
    source = f"def __init__({', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(compile(source, f"<{cls.__module__}.{cls.__qualname__}>", "exec"), scope)
    return scope["__init__"]


def _values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda self: tuple([getattr(self, name) for name in names])


def _repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({shown})"

    return __repr__


def _eq(names: tuple[str, ...]) -> Callable[[Any, Any], Any]:
    values = _values(names)

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)

    return __eq__


def _hash(names: tuple[str, ...]) -> Callable[[Any], int]:
    values = _values(names)
    return lambda self: hash(values(self))


def _refuse_set(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")
