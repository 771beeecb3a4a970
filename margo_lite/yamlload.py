"""YAML loading that is safe against hostile input.

`yaml.safe_load` constructs no objects, but it still accepts duplicate keys (the last one
silently wins), documents nested deep enough to exhaust the stack, and alias bombs ("billion
laughs") whose expansion eats memory in whatever walks the result later. This loader
refuses all three with an `InvalidYamlError` carrying a code.
"""

from __future__ import annotations

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from margo_lite.errors import InvalidYamlError
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class Limits:
    max_depth: int = 64
    max_nodes: int = 200_000  # after alias expansion
    max_documents: int = 1_000
    max_bytes: int = 4 * 1024 * 1024  # of one stream, checked before parsing


DEFAULT_LIMITS = Limits()


class _LimitedComposer(Composer):
    """Counts nesting depth and the expanded size of every node while composing."""

    limits: Limits

    def _init_limits(self, limits: Limits) -> None:
        self.limits = limits
        self._depth = 0
        self._weights: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise InvalidYamlError(
                f"nesting deeper than {self.limits.max_depth} levels", code="YAML_TOO_COMPLEX"
            )
        if self.check_event(AliasEvent):
            target = self.anchors.get(self.peek_event().anchor)
            if target is not None and id(target) not in self._weights:
                raise InvalidYamlError(
                    f"line {target.start_mark.line + 1}: an alias refers to a node that "
                    "contains it (recursive document)"
                )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._weights:
            weight = 1
            if isinstance(node, SequenceNode):
                weight += sum(self._weights.get(id(child), 1) for child in node.value)
            elif isinstance(node, MappingNode):
                weight += sum(
                    self._weights.get(id(k), 1) + self._weights.get(id(v), 1) for k, v in node.value
                )
            if weight > self.limits.max_nodes:
                raise InvalidYamlError(
                    f"document expands to more than {self.limits.max_nodes} nodes "
                    "(alias bomb or oversized document)",
                    code="YAML_TOO_COMPLEX",
                )
            self._weights[id(node)] = weight
        return node


class _StrictConstructor(SafeConstructor):
    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    raise InvalidYamlError(
                        f"line {key_node.start_mark.line + 1}: a mapping key must be a scalar"
                    ) from None
                if duplicate:
                    raise InvalidYamlError(
                        f"line {key_node.start_mark.line + 1}: duplicate key {key!r}"
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Loader(Reader, Scanner, Parser, _LimitedComposer, _StrictConstructor, Resolver):
    """The pure-Python pipeline: LibYAML's parser would compose nodes past our limits."""

    def __init__(self, stream: bytes | str, limits: Limits) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _LimitedComposer.__init__(self)
        _LimitedComposer._init_limits(self, limits)
        _StrictConstructor.__init__(self)
        Resolver.__init__(self)


def kind_of(value: Any) -> str:
    """How a loaded YAML value reads in an error message: "a mapping", "a list"..."""
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "nothing (null)",
    }.get(type(value), type(value).__name__)


def load_all(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every document in `data`, or `InvalidYamlError` (never another exception)."""
    documents: list[Any] = []
    if len(data) > limits.max_bytes:
        raise InvalidYamlError(f"larger than {limits.max_bytes} bytes", code="YAML_TOO_LARGE")
    loader = None
    try:
        loader = _Loader(data, limits)
        while loader.check_node():
            if len(documents) >= limits.max_documents:
                raise InvalidYamlError(
                    f"more than {limits.max_documents} documents", code="YAML_TOO_COMPLEX"
                )
            documents.append(loader.construct_document(loader.get_node()))
            loader._weights.clear()
    except InvalidYamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidYamlError(f"{where}{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidYamlError(str(exc).splitlines()[0] if str(exc) else "invalid YAML") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidYamlError(f"not valid text: {exc}") from None
    except RecursionError:
        raise InvalidYamlError("nesting too deep", code="YAML_TOO_COMPLEX") from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def load_one(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The single document in `data` (None when empty)."""
    documents = load_all(data, limits)
    if len(documents) > 1:
        raise InvalidYamlError("expected one YAML document, found several")
    return documents[0] if documents else None
