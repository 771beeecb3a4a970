"""Values of the desired state: frozen for the model, thawed for output, digested for the planner.

`freeze` makes parsed YAML immutable (a component's properties cannot change behind the
planner's back); `thaw` gives plain dicts and lists back for YAML or JSON output; `digest`
hashes a value in a canonical form that keeps types apart (1 is not "1"), so an unchanged
spec keeps its digest and is left untouched. `apply_overlays` sets parameter values in a
compose document with the one pointer grammar.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType

from margo_lite import pointer as pointers
from margo_lite import yamlload
from margo_lite.errors import ComposeError, DesiredStateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def apply_overlays(document: Any, overlays: Mapping[str, Any]) -> Any:
    """A copy of a compose document with each dotted pointer set to its value (the one
    grammar of `margo_lite.pointer`, as every package gets it at apply)."""
    try:
        return pointers.apply(thaw(document), {k: thaw(v) for k, v in overlays.items()})
    except ComposeError as exc:
        raise DesiredStateError(exc.message, code=exc.code) from None


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
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


def canonical(value: Any) -> Any:
    """A JSON-able form that keeps types apart (1 vs "1") and sorts any kind of key."""
    if isinstance(value, Mapping):
        items = [[canonical(k), canonical(v)] for k, v in value.items()]
        return {"m": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return {"s": sorted((canonical(v) for v in value), key=json.dumps)}
    if value is None or isinstance(value, str):
        return value
    return {type(value).__name__: repr(value)}


def digest(value: Any) -> str:
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


kind = yamlload.kind_of


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
