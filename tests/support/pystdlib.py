"""Which python3-* packages of openembedded-core hold the standard modules some code imports.

openembedded-core splits Python's standard library into packages (python3-json,
python3-netclient, ...) by a manifest, `python3-manifest.json`; whatever no entry names goes
to python3-misc. A recipe must RDEPEND on the packages of every module its code imports, or
the image lacks them. These pure functions derive that list from the code itself.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

PREFIX = "${libdir}/python${PYTHON_MAJMIN}/"


def imported_modules(files: Iterable[Path]) -> set[str]:
    """Absolute imports (`import a.b`, `from a.b import c`) of the standard library."""
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in sys.stdlib_module_names}


def load_manifest(text: str) -> dict[str, dict]:
    """The manifest's JSON (in file order, which is packaging order) after its comments."""
    start = text.find("# EOC")
    body = text[text.index("\n", start) + 1 :] if start != -1 else text
    return json.loads(body)


def _module_file(name: str) -> str | None:
    """The module's file relative to the standard library folder, or None for a built-in."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    origin = Path(spec.origin)
    if origin.parent.name == "lib-dynload":
        return f"lib-dynload/{origin.name}"
    return str(origin.relative_to(stdlib))


def _matches(path: str, pattern: str) -> bool:
    pattern = pattern.removeprefix(PREFIX).rstrip("/")
    return path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern)


def owner(manifest: dict[str, dict], module: str) -> str:
    """The package holding `module`: the first manifest entry that matches its file, as the
    python3 recipe packages in manifest order; python3-misc when none does."""
    path = _module_file(module)
    if path is None:  # built into this interpreter; in a Yocto build it may be a shared lib
        top = module.split(".")[0]
        candidates = [f"lib-dynload/{top}.cpython-3-x.so", f"{top}.py"]
        for key, entry in manifest.items():
            if any(_matches(c, f) for c in candidates for f in entry["files"]):
                return key
        return "core"
    for key, entry in manifest.items():
        if any(_matches(path, pattern) for pattern in entry["files"]):
            return key
    return "misc"


def packages_for(manifest: dict[str, dict], modules: Iterable[str]) -> dict[str, str]:
    """Module name -> recipe package name (python3-...)."""
    return {module: f"python3-{owner(manifest, module)}" for module in sorted(modules)}
