"""How a configuration key is declared and parsed: `option(default, parser, doc)` and the parsers.

A section is a frozen value class whose fields are `option(...)`s; `parse_section` turns one
YAML mapping into it, refusing unknown keys and naming the dotted key in every error. The
parsers are pure: they take the raw value and a `Context` (where relative paths start) and
return the converted value or raise ValueError with a message; the loader adds file and key.
The sections themselves live in `margo_lite.sections`, the whole file in `margo_lite.config`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from margo_lite import schedule, valueclass, yamlload
from margo_lite.errors import ConfigError
from margo_lite.proxy import Proxy, Rule, parse_proxy_url, parse_rule
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIZE = re.compile(r"^(\d+)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SPIFFE_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_SPIFFE_ID = 2048

_kind = yamlload.kind_of


@dataclass(frozen=True)
class Context:
    """What a parser may need beyond the value: where relative paths start."""

    base_dir: Path


if TYPE_CHECKING:
    Parser = Callable[[Any, Context], Any]


# --- parsers: raise ValueError with a message; the loader adds file and key -----------------


def string(value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def nonempty(value: Any, ctx: Context) -> str:
    if not string(value, ctx).strip():
        raise ValueError("must not be empty")
    return value


def boolean(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def duration(value: Any, ctx: Context) -> float:
    return schedule.parse_duration(value)


def positive_duration(value: Any, ctx: Context) -> float:
    seconds = schedule.parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def size(value: Any, ctx: Context) -> int:
    """Bytes from an integer or "512MiB", "2G", "64k"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {_kind(value)}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"bad size {value!r} (use bytes, or a string like 64KiB, 512MiB, 2GiB)")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _SIZE_FACTORS[unit]


def positive_int(value: Any, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number above zero, got {value!r}")
    return value


def fraction(value: Any, ctx: Context) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def file_path(value: Any, ctx: Context) -> str:
    """A file or folder; relative paths start at the configuration file's folder."""
    p = Path(nonempty(value, ctx))
    return str(p if p.is_absolute() else ctx.base_dir / p)


def http_url(*schemes: str) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        value = nonempty(value, ctx).strip()
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in schemes:
            raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL")
        return value.rstrip("/")

    return parse


def git_url(value: Any, ctx: Context) -> str:
    """http(s):// or file:// URLs, or a local path (for tests and USB workflows)."""
    value = nonempty(value, ctx).strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"unsupported URL scheme {scheme!r} (http, https or file)")
        return value
    return file_path(value, ctx)


def choice(*options: str) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return parse


def optional(parser: Parser) -> Parser:
    def parse(value: Any, ctx: Context) -> Any:
        return None if value is None else parser(value, ctx)

    return parse


def list_of(parser: Parser) -> Parser:
    def parse(value: Any, ctx: Context) -> tuple:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_kind(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(parser(item, ctx))
            except ValueError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return tuple(items)

    return parse


def mapping(value: Any, ctx: Context) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {_kind(value)}")
    return value


_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,250}[A-Za-z0-9])?$")


def label_map(value: Any, ctx: Context) -> dict[str, Any]:
    """Labels as the Margo 1.0 capabilities schema allows them: a plain name to a string,
    number, boolean, or a list of strings or of numbers."""
    found = dict(mapping(value, ctx))

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    for key, item in found.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not a plain name")
        if isinstance(item, str | bool) or number(item):
            continue
        if isinstance(item, list) and (
            all(isinstance(v, str) for v in item) or all(number(v) for v in item)
        ):
            continue
        raise ValueError(
            f"label {key!r}: a string, number, boolean, or a list of strings or of numbers"
        )
    return found


def device_id(value: Any, ctx: Context) -> str:
    value = string(value, ctx)
    if not _DEVICE_ID.match(value):
        raise ValueError(
            f"{value!r} is not a valid device id (letters, digits, '.', '_', '-'; "
            "1 to 128 characters, starting with a letter or digit)"
        )
    return value


def spiffe_id(value: Any, ctx: Context) -> str:
    """A SPIFFE ID as the SPIFFE ID standard writes it: spiffe://trust-domain/path."""
    value = nonempty(value, ctx).strip()
    if not value.startswith("spiffe://"):
        raise ValueError(f"{value!r} is not a SPIFFE ID (it must start with spiffe://)")
    if len(value.encode()) > MAX_SPIFFE_ID:
        raise ValueError(f"a SPIFFE ID is at most {MAX_SPIFFE_ID} bytes")
    domain, _, path = value[len("spiffe://") :].partition("/")
    if not _SPIFFE_TRUST_DOMAIN.match(domain):
        raise ValueError(
            f"{value!r}: bad trust domain {domain!r} (lower-case letters, digits, '.', '_', '-')"
        )
    for segment in path.split("/") if path else ():
        if segment in ("", ".", "..") or not _SPIFFE_SEGMENT.match(segment):
            raise ValueError(
                f"{value!r}: bad path segment {segment!r} (letters, digits, '.', '_', '-'; "
                "not empty, '.' or '..')"
            )
    return value


def daily_window(value: Any, ctx: Context) -> schedule.DailyWindow:
    return schedule.parse_daily_window(string(value, ctx))


def window(value: Any, ctx: Context) -> schedule.Window:
    return schedule.parse_window(string(value, ctx))


def proxy_url(value: Any, ctx: Context) -> Proxy:
    return parse_proxy_url(nonempty(value, ctx))


def no_proxy_rule(value: Any, ctx: Context) -> Rule:
    return parse_rule(nonempty(value, ctx))


# --- declaring and parsing a section ---------------------------------------------------------


#: `shown` for a CA file left unset: the system's trust store verifies.
SYSTEM_STORE = "system store"


def option(
    default: Any,
    parser: Parser,
    doc: str,
    *,
    required: bool = False,
    is_file: bool = False,
    shown: str | None = None,
) -> Any:
    """Declare a configuration key: its default, its parser and its documentation.

    `doc` is the text of its row in docs/configuration.md (Markdown). `is_file` marks a file
    the agent reads, so `check_files` can test it at start-up. `shown` replaces the default
    in the docs where the value alone would mislead ("system store" for None).
    """
    meta = {"parser": parser, "doc": doc, "required": required, "is_file": is_file, "shown": shown}
    if isinstance(default, list | dict):
        raise TypeError("use a tuple or None for container defaults")
    return field(default=default, metadata=meta)


def parse_section(cls: type, raw: Any, name: str, source: str, ctx: Context) -> Any:
    """One section from its YAML mapping (None: every default); names the key on a mistake."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {_kind(raw)}", source=source, key=name)
    fields = {f.name: f for f in valueclass.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"unknown key (known: {', '.join(fields)})", source=source, key=f"{name}.{key}"
            )
    values = {}
    for key, f in fields.items():
        if key not in raw:
            if f.metadata["required"]:
                raise ConfigError("required key is missing", source=source, key=f"{name}.{key}")
            continue
        try:
            values[key] = f.metadata["parser"](raw[key], ctx)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"{name}.{key}") from None
    return cls(**values)
