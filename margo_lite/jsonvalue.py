"""Plain JSON values: what a compose document and a parameter value may be made of.

dict (string keys), list, str, int, float (finite), bool, None. A value of any other type
(a YAML date, a tuple, a mapping proxy, a set) is refused with `COMPOSE_INVALID` naming
its path, instead of being skipped by one step and rendered by the next.
"""

from __future__ import annotations

import hashlib
import json
import math

from margo_lite.errors import ComposeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CODE = "COMPOSE_INVALID"


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=unique_object)`: an object, or ValueError on a
    duplicate key (JSON allows them; readers disagree on which one wins)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key[:40]!r}")
        found[key] = value
    return found


def fail(where: str, message: str) -> ComposeError:
    return ComposeError(f"{where or 'the document'}: {message}", code=CODE)


def plain(value: Any, where: str = "") -> Any:
    """A fresh deep copy of `value` if it holds plain JSON types only; COMPOSE_INVALID if not."""
    if value is None or isinstance(value, str | bool):
        return value if type(value) in (str, bool, type(None)) else _refuse(value, where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(where, f"{value!r} is not a finite number")
        return float(value)
    if type(value) is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise fail(where, f"key {key!r} is {type(key).__name__}, not a string")
            out[key] = plain(item, f"{where}.{key}" if where else key)
        return out
    if type(value) is list:
        return [plain(item, f"{where}.{index}") for index, item in enumerate(value)]
    return _refuse(value, where)


def _refuse(value: Any, where: str) -> Any:
    raise fail(where, f"{type(value).__name__} is not a JSON value (quote it to make a string)")


def digest(document: Any) -> str:
    """`sha256:<hex>` of a plain value: equal values, equal digests."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
