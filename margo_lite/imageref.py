"""Container image references, checked against the OCI distribution reference grammar.

An image reference reaches the engine's command line as a positional word: anything not
matching the grammar (a leading `-`, spaces, an empty string) is refused before any engine
call, so it can never be read as an option.
"""

from __future__ import annotations

import re

from margo_lite.errors import ComposeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_LENGTH = 512
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(rf"{_NAME}(?::{_TAG})?(?:@{_DIGEST})?")


def valid(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_LENGTH
        and REFERENCE.fullmatch(value) is not None
    )


def check(value: Any, where: str) -> str:
    """`value` if it is an image reference; ComposeError (IMAGE_INVALID) naming `where`."""
    if not valid(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ComposeError(
            f"{where}: {shown} is not an image reference ([registry/]name[:tag][@digest])",
            code="IMAGE_INVALID",
        )
    return value
