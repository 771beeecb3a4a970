"""docs/architecture.md names the functions that do each step: every dotted name in it
(`module.function`, `Class.method`, `package.module.Class.method`) exists in the package,
so the walk cannot drift from the code unnoticed. Configuration keys (`poll.interval`) and
file names (`agent.json`) and label names (`io.margo.device`) are told apart and skipped."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import margo_lite
from margo_lite import config, valueclass

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"`([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+)(?:\([^`]*\))?`")
FILE = re.compile(r"\.(json|ya?ml|py|md|prev|asc|sig|tar|gz|conf|service)$")
NOT_CODE = {"module.Class.method"}  # the page's own notation


def modules() -> dict[str, object]:
    found = {}
    for info in pkgutil.walk_packages(margo_lite.__path__, "margo_lite."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        found[info.name.removeprefix("margo_lite.")] = importlib.import_module(info.name)
    return found


def config_keys() -> set[str]:
    keys = set()
    for section in valueclass.fields(config.Config):
        kind = section.type if isinstance(section.type, type) else None
        name = str(section.type).split(" | ")[0].split(".")[-1]  # "GitConfig | None": GitConfig
        kind = kind or getattr(config, name, None)
        if valueclass.is_dataclass(kind):
            keys |= {f"{section.name}.{f.name}" for f in valueclass.fields(kind)}
    return keys


def resolves(name: str, mods: dict[str, object]) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest module prefix, then attributes
        module = mods.get(".".join(parts[:cut]))
        if module is not None:
            return _attrs(module, parts[cut:])
    holders = [getattr(m, parts[0]) for m in mods.values() if hasattr(m, parts[0])]
    return any(_attrs(h, parts[1:]) for h in holders)


def _attrs(obj: object, names: list[str]) -> bool:
    for name in names:
        if valueclass.is_dataclass(obj) and name in {f.name for f in valueclass.fields(obj)}:
            return True  # a field without a default is no class attribute
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def test_every_name_in_the_walk_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    mods, keys = modules(), config_keys()
    names = {
        n
        for n in NAME.findall(text)
        if not FILE.search(n) and n not in keys | NOT_CODE and not n.startswith("io.margo.")
    }
    assert len(names) > 50  # the walk names what it describes
    missing = sorted(n for n in names if not resolves(n, mods))
    assert not missing, f"docs/architecture.md names what the code does not have: {missing}"


def test_the_check_catches_a_name_that_is_gone():
    mods = modules()
    assert resolves("Agent.tick", mods) and resolves("act.run_step", mods)
    assert resolves("git.store.Store.fetch", mods) and resolves("records.RecordBook.save", mods)
    assert not resolves("Agent._run_step", mods)
    assert not resolves("act.no_such_step", mods)
