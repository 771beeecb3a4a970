"""Value classes: the part of `dataclasses` margo-lite uses, without its cost at start-up.

`dataclasses` imports `inspect` (with `ast` and `dis`) and compiles five or six methods for
every class. On the agent's path that was about 1.1 MiB of a 25 MiB process and a fifth of
its start-up (docs/proof.md). Here one `__init__` is compiled per class; equality, hashing,
`repr` and the frozen guard are closures over the class's field names, nothing compiled.

The spelling and the rules are the standard library's, for the subset in use: `@dataclass`,
`@dataclass(frozen=True)`, `field(default=, default_factory=, init=, repr=, compare=, metadata=)`,
`fields`, `replace`, `is_dataclass`, `FrozenInstanceError`. What `dataclasses` refuses is
refused here too (an unhashable default, frozen and mutable bases mixed, a field without an
annotation), and so is what this subset leaves out (`__post_init__`). Annotations are read
as written (every module defers them), so a `ClassVar[...]` annotation is not a field.
"""

from __future__ import annotations

import reprlib
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

_FIELDS = "__valueclass_fields__"
_FROZEN = "__valueclass_frozen__"
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
    if hasattr(cls, "__post_init__"):  # not in the subset: refused, never silently skipped
        raise TypeError(f"{cls.__qualname__}: __post_init__ is not supported")
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        if hasattr(base, _FIELDS):
            if getattr(base, _FROZEN) != frozen:  # as `dataclasses`: all frozen or none
                raise TypeError(f"{cls.__qualname__}: frozen and mutable value classes mixed")
            inherited.update((f.name, f) for f in getattr(base, _FIELDS))
    # `inspect.get_annotations` would load the module this one exists to avoid
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    own = {
        name: _declared(cls, name, annotation)
        for name, annotation in annotations.items()
        if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))
    }
    for name, value in cls.__dict__.items():
        if isinstance(value, Field) and name not in own:
            raise TypeError(f"{cls.__qualname__}.{name} is a field without an annotation")
    every = tuple({**inherited, **own}.values())
    setattr(cls, _FIELDS, every)
    setattr(cls, _FROZEN, frozen)
    explicit_hash = cls.__dict__.get("__hash__") is not None  # `__eq__` alone sets it to None
    compared = tuple(f.name for f in every if f.compare)
    _add(cls, "__init__", _init(cls, every, frozen))
    _add(cls, "__repr__", _repr(tuple(f.name for f in every if f.repr)))
    _add(cls, "__eq__", _eq(compared))
    if frozen:
        _add(cls, "__setattr__", _frozen_setattr(cls, frozenset(f.name for f in every)))
        _add(cls, "__delattr__", _frozen_delattr(cls, frozenset(f.name for f in every)))
    if not explicit_hash:  # frozen: hashed by value; mutable: not hashable, as `dataclasses`
        cls.__hash__ = _hash(compared) if frozen else None  # type: ignore[assignment]
    cls.__match_args__ = tuple(f.name for f in every if f.init)  # type: ignore[attr-defined]
    return cls


def _declared(cls: type, name: str, annotation: Any) -> Field:
    """The field `name`: its `field(...)`, or a plain default as `dataclasses` finds it (also
    on a base class), or none."""
    value = getattr(cls, name, MISSING)
    f = value if isinstance(value, Field) else Field(value, MISSING, True, True, True, None)
    f.name, f.type = name, annotation
    if f.default is not MISSING and f.default.__class__.__hash__ is None:
        raise ValueError(f"mutable default {type(f.default).__name__} for field {name}")
    if isinstance(value, Field):
        if f.default is MISSING:
            delattr(cls, name)
        else:
            setattr(cls, name, f.default)
    return f


def _add(cls: type, name: str, function: Any) -> None:
    """Set a method unless the class body wrote its own, as `dataclasses` does."""
    if name not in cls.__dict__:
        function.__qualname__ = f"{cls.__qualname__}.{name}"  # each made for this class
        setattr(cls, name, function)


def _init(cls: type, every: tuple[Field, ...], frozen: bool) -> Any:
    """Compile `__init__(self, a, b=<default>, ...)`: positional and keyword, as declared.

    The code's own names start with `__vc_`, which no field of margo-lite's starts with.
    A field left out of `__init__` with a plain default is not set: the class holds it."""
    scope: dict[str, Any] = {
        "__name__": cls.__module__,
        "__vc_set": object.__setattr__,
        "__vc_missing": MISSING,
    }
    params, body, defaulted = ["__vc_self"], [], False
    for f in every:
        if f.name.startswith("__vc_"):
            raise TypeError(f"{cls.__qualname__}: the field name {f.name} is reserved")
        default, factory, value = f"__vc_default_{f.name}", f"__vc_factory_{f.name}", f.name
        scope[default], scope[factory] = f.default, f.default_factory
        if f.init:
            if f.default is not MISSING:
                params.append(f"{f.name}={default}")
            elif f.default_factory is not MISSING:
                params.append(f"{f.name}=__vc_missing")
                value = f"{factory}() if {f.name} is __vc_missing else {f.name}"
            elif defaulted:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
            else:
                params.append(f.name)
            defaulted = defaulted or f.default is not MISSING or f.default_factory is not MISSING
        elif f.default_factory is not MISSING:
            value = f"{factory}()"
        else:
            continue
        if frozen:
            body.append(f"__vc_set(__vc_self, {f.name!r}, {value})")
        else:
            body.append(f"__vc_self.{f.name} = {value}")
    source = f"def __init__({', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(compile(source, f"<{cls.__module__}.{cls.__qualname__}>", "exec"), scope)
    return scope["__init__"]


def _values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda self: tuple([getattr(self, name) for name in names])


def _repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    @reprlib.recursive_repr()  # a value that holds itself shows "...", as with `dataclasses`
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


def _frozen_setattr(cls: type, names: frozenset[str]) -> Callable[[Any, str, Any], None]:
    """Refuse to set a field (any attribute of `cls` itself); a plain subclass keeps its own."""

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    return __setattr__


def _frozen_delattr(cls: type, names: frozenset[str]) -> Callable[[Any, str], None]:
    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return __delattr__
