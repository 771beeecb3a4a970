"""docs/errors.md, rendered from margo_lite/errors/: every code, its family, what to do.

Regenerate after changing an error class: `python -m tests.support.errortable > docs/errors.md`
(tests/test_errors.py fails while the page is stale).
"""

from __future__ import annotations

import inspect

from margo_lite import errors

HEADER = """\
# Error codes

Every code margo-lite puts in a status report or a log line, the family that decides what
the agent does next, and what you do about it. Rendered from `margo_lite/errors/` by
`tests/support/errortable.py`; do not edit by hand.

- **transient**: the cause may go away by itself. The agent backs off and tries again (a
  failed component after 10 s, doubling up to `poll.max_backoff`; a poll after
  `poll.interval`, doubling; reports after 2 s, doubling to 300 s).
- **stalled**: only a new desired revision (a new commit) or a configuration change can fix
  it. The agent does not retry: the component stays `Failed` until its desired content or
  the configuration changes (a reload, or a restart, tries once more); a refused revision is
  not read again; a poll that fails this way is tried again only at `poll.max_backoff`.
  What runs keeps running.
"""


#: The modules of margo_lite.errors in the order the page lists them.
AREA_MODULES = ("base", "source", "packages", "engine", "wos")


def classes() -> list[type[errors.MargoLiteError]]:
    """Every error class that declares codes, area by area (`AREA_MODULES`), each in the
    order its module defines them."""
    found = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.MargoLiteError) and "codes" in vars(c)
    ]
    return sorted(
        found,
        key=lambda c: (
            AREA_MODULES.index(c.__module__.rpartition(".")[2]),
            inspect.getsourcelines(c)[1],
        ),
    )


def family_name(cls: type[errors.MargoLiteError]) -> str:
    return "stalled" if issubclass(cls, errors.StalledError) else "transient"


def rows() -> list[tuple[str, str, str, str]]:
    """(code, family, what to do, classes) once per code; the first class that declares a
    code gives its advice."""
    table: dict[str, list[str]] = {}
    for cls in classes():
        for code, action in cls.codes.items():
            row = table.setdefault(code, [code, family_name(cls), action, ""])
            row[3] = ", ".join(filter(None, (row[3], f"`{cls.__name__}`")))
    for code, (family, action) in errors.REPORT_CODES.items():
        table.setdefault(code, [code, family_name(family), action, "(a status report only)"])
    return [(r[0], r[1], r[2], r[3]) for r in table.values()]


def render() -> str:
    lines = [HEADER, "| code | family | what you do | raised as |", "| --- | --- | --- | --- |"]
    lines += [f"| `{code}` | {fam} | {action} | {where} |" for code, fam, action, where in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
