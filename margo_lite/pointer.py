"""The one grammar of parameter pointers into a compose document, and the one way to apply them.

Validation (`desired`, for packages in the repository) and apply (`composedoc`, for every
package, downloaded or not) both go through here, so a pointer means the same wherever the
package comes from. A pointer is dotted segments of letters, digits, `_` and `-`, at least
two, starting with one of `ROOTS` or `x-`. A segment of digits reaches into an existing list
element (`services.web.volumes.0`); anywhere else it is a mapping key. Missing mappings on
the way are created; a path through a scalar, or past the end of a list, is refused.
Pointers apply to the document as written (before syntax is folded and paths resolved),
so a value set through a pointer goes through every later check like any other.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from margo_lite.errors import ComposeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Top-level compose keys a pointer may reach; `name` and the rest would break the project.
ROOTS = ("services", "networks", "volumes", "configs", "secrets")
CODE = "UNSUPPORTED_POINTER"
MAX_LENGTH = 1024


def parse(pointer: Any) -> tuple[str, ...]:
    """The segments of a valid compose pointer; ComposeError (UNSUPPORTED_POINTER) if not."""
    if not isinstance(pointer, str) or len(pointer) > MAX_LENGTH:
        raise ComposeError(f"{_show(pointer)} is not a pointer", code=CODE)
    segments = tuple(pointer.split("."))
    if len(segments) < 2 or not all(SEGMENT.fullmatch(s) for s in segments):
        raise ComposeError(
            f"{_show(pointer)} is neither ENV.NAME nor a dotted path like services.web.image",
            code=CODE,
        )
    if not (segments[0] in ROOTS or segments[0].startswith("x-")):
        raise ComposeError(
            f"{_show(pointer)}: a compose path must start with one of {', '.join(ROOTS)} or x-",
            code=CODE,
        )
    return segments


def apply(document: Any, overlays: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `document` with each pointer set to a deep copy of its value."""
    if not isinstance(document, dict):
        raise ComposeError("the compose document is not a mapping", code=CODE)
    result = copy.deepcopy(document)
    for pointer in sorted(overlays):
        segments = parse(pointer)
        node: Any = result
        for depth, segment in enumerate(segments):
            last = depth == len(segments) - 1
            if isinstance(node, list):
                if not segment.isdigit() or int(segment) >= len(node):
                    reached = ".".join(segments[:depth]) or "the document"
                    raise ComposeError(
                        f"{pointer!r} cannot apply: {reached} is a list of {len(node)} "
                        f"without an element {segment!r}",
                        code=CODE,
                    )
                key: int | str = int(segment)
            elif isinstance(node, dict):
                key = segment
            else:
                reached = ".".join(segments[:depth])
                raise ComposeError(
                    f"{pointer!r} cannot apply: {reached} is {_kind(node)}, "
                    "not a mapping or a list",
                    code=CODE,
                )
            if last:
                node[key] = copy.deepcopy(overlays[pointer])
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return result


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
