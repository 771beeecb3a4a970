"""margo_lite.valueclass behaves as `dataclasses` for every feature margo-lite uses.

Each case declares one class twice, with the standard library and with valueclass, and
checks that both give the same answers.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from margo_lite import valueclass


def twins(body: str, frozen: bool = True) -> tuple[type, type]:
    """The class `Point` of `body`, made by dataclasses and by valueclass (in this module,
    where dataclasses looks for the `ClassVar` of a deferred annotation)."""
    made = []
    for module in (dataclasses, valueclass):
        scope = {"dataclass": module.dataclass, "field": module.field}
        scope |= {"ClassVar": ClassVar, "__name__": __name__}
        decorator = "@dataclass(frozen=True)" if frozen else "@dataclass"
        exec(f"from __future__ import annotations\n{decorator}\nclass Point:\n{body}", scope)
        made.append(scope["Point"])
    return made[0], made[1]


PLAIN = "    x: int\n    y: int = 2\n    tags: tuple = ()\n"


@pytest.mark.parametrize("frozen", [True, False])
def test_init_repr_and_equality_match_the_standard_library(frozen):
    std, lean = twins(PLAIN, frozen)

    for args, kwargs in [((1,), {}), ((1, 5), {}), ((), {"x": 3, "tags": ("a",)})]:
        a, b = std(*args, **kwargs), lean(*args, **kwargs)
        assert repr(a) == repr(b)
        assert (a == std(*args, **kwargs)) == (b == lean(*args, **kwargs)) is True
        assert (a == std(9)) == (b == lean(9)) is False
    assert lean(1) != std(1)  # another class is never equal
    assert valueclass.replace(lean(1, 5), y=7) == lean(1, 7)
    assert [f.name for f in valueclass.fields(lean)] == ["x", "y", "tags"]


@pytest.mark.parametrize("args", [(), (1, 2, 3, 4)])
def test_wrong_arguments_are_a_type_error_as_with_the_standard_library(args):
    std, lean = twins(PLAIN)

    with pytest.raises(TypeError):
        std(*args)
    with pytest.raises(TypeError):
        lean(*args)
    with pytest.raises(TypeError):
        lean(1, z=2)


def test_frozen_values_refuse_changes_and_hash_by_value():
    _, lean = twins(PLAIN)
    point = lean(1)

    with pytest.raises(valueclass.FrozenInstanceError):
        point.x = 2
    with pytest.raises(AttributeError):
        del point.y
    assert hash(point) == hash(lean(1))
    assert len({point, lean(1), lean(2)}) == 2


def test_mutable_values_change_and_are_not_hashable():
    std, lean = twins(PLAIN, frozen=False)
    point = lean(1)
    point.x = 4

    assert point == lean(4)
    assert std.__hash__ is lean.__hash__ is None


def test_field_options():
    body = (
        "    x: int\n"
        "    items: list = field(default_factory=list)\n"
        "    secret: str = field(default='s', repr=False)\n"
        "    raw: dict = field(default_factory=dict, compare=False)\n"
        "    cache: dict = field(default_factory=dict, init=False, repr=False)\n"
        "    tag: str = field(default='t', metadata={'doc': 'a tag'})\n"
        "    kind: ClassVar[str] = 'point'\n"
    )
    std, lean = twins(body)
    a, b = std(1), lean(1)

    assert repr(a) == repr(b) == "Point(x=1, items=[], raw={}, tag='t')"
    assert lean(1).items is not b.items  # one new list per value
    assert lean(1, raw={"other": 1}) == b  # not compared
    assert b.cache == {} and lean.kind == "point"
    assert [f.name for f in valueclass.fields(b)] == [f.name for f in dataclasses.fields(a)]
    assert valueclass.fields(lean)[-1].metadata["doc"] == "a tag"
    with pytest.raises(ValueError):
        valueclass.replace(b, cache={})


def test_mistakes_in_a_declaration_fail_when_the_class_is_made():
    with pytest.raises(ValueError):
        twins("    x: list = []\n")
    with pytest.raises(TypeError):
        twins("    x: int = 1\n    y: int\n")
    with pytest.raises(ValueError):
        valueclass.field(default=1, default_factory=int)
    with pytest.raises(TypeError):
        valueclass.fields(object())
    with pytest.raises(TypeError):  # what valueclass does not do, it refuses
        valueclass.dataclass(type("Checked", (), {"__post_init__": lambda self: None}))


def test_a_method_the_class_writes_itself_is_kept():
    @valueclass.dataclass(frozen=True)
    class Name:
        text: str

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Name) and self.text.lower() == other.text.lower()

        def __hash__(self) -> int:
            return hash(self.text.lower())

        def __repr__(self) -> str:
            return self.text

    assert Name("A") == Name("a") and hash(Name("A")) == hash(Name("a"))
    assert repr(Name("A")) == "A"


def test_fields_are_inherited_in_order():
    @valueclass.dataclass(frozen=True)
    class Base:
        x: int
        y: int = 0

    @valueclass.dataclass(frozen=True)
    class Child(Base):
        z: int = 1
        y: int = 5

    assert [f.name for f in valueclass.fields(Child)] == ["x", "y", "z"]
    assert Child(1) == Child(1, 5, 1)
    assert valueclass.is_dataclass(Child) and not valueclass.is_dataclass(int)


def test_what_dataclasses_refuses_valueclass_refuses():
    def make(bases: tuple[type, ...], body: dict, frozen: bool = True) -> type:
        return valueclass.dataclass(type("V", bases, body), frozen=frozen)

    with pytest.raises(ValueError):
        twins("    x: bytearray = bytearray()\n")  # unhashable: one shared by every value
    with pytest.raises(TypeError):
        make((), {"x": valueclass.field(default=1)})  # a field without an annotation
    frozen_base = make((), {"__annotations__": {"x": "int"}})
    with pytest.raises(TypeError):
        make((frozen_base,), {"__annotations__": {"y": "int"}}, frozen=False)
    with pytest.raises(TypeError):  # inherited: still never silently skipped
        make((type("Base", (), {"__post_init__": lambda self: None}),), {})
    with pytest.raises(TypeError):
        make((), {"__annotations__": {"__vc_self": "int"}})


def test_defaults_subclasses_and_self_reference_as_with_the_standard_library():
    for module in (dataclasses, valueclass):

        class Plain:
            x = 1

        @module.dataclass(frozen=True)
        class Point(Plain):
            x: int  # its default comes from the plain base
            cache: int = module.field(default=0, init=False)

        class Labelled(Point):  # a plain subclass of a frozen value keeps its own attributes
            pass

        labelled = Labelled()
        labelled.label = "a"
        assert (Point().x, Point(2).x, labelled.label) == (1, 2, "a")
        assert "cache" not in vars(Point())  # a plain default stays on the class
        with pytest.raises(AttributeError):
            labelled.x = 3

        @module.dataclass
        class Node:
            child: object = None

        node = Node()
        node.child = node
        assert repr(node).endswith(".<locals>.Node(child=...)")
        with pytest.raises(TypeError, match=r"Node.__init__\(\)"):
            Node(1, 2)
