"""The Yocto layer (packaging/yocto), checked with a real bitbake on two releases.

Quick: margo-lite's RDEPENDS hold exactly the python3-* packages its imports need, by both
releases' python3 manifests; the pinned release commit carries the license and version the
recipe states; oelint-adv finds nothing. Slow: bitbake (from the snapshots in
`../shared/yocto`, see its README) parses openembedded-core with this layer for scarthgap and
for wrynose, `bitbake -e` and `bitbake -g` resolve every RDEPENDS to a provider, and
`-c patch` (fetch, unpack, patch) runs for margo-lite, from a tarball of this checkout, and
for python3-dulwich, from its PyPI release through a local mirror with the recipe's
checksum. No network: `BB_NO_NETWORK = "1"`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from margo_lite import __version__
from tests.conftest import ROOT
from tests.support import pystdlib

LAYER = ROOT / "packaging" / "yocto"
TEST_LAYER = ROOT / "tests" / "yocto" / "meta-margo-lite-test"
RECIPE = LAYER / "recipes-support" / "margo-lite" / f"margo-lite_{__version__}.bb"
DULWICH = next((LAYER / "recipes-devtools" / "python").glob("python3-dulwich_*.bb"))
DULWICH_VERSION = DULWICH.stem.split("_")[1]
SNAPSHOTS = Path(os.environ.get("MARGO_LITE_YOCTO_SNAPSHOTS", ROOT.parent / "shared" / "yocto"))
CACHE = Path(os.environ.get("MARGO_LITE_TEST_CACHE", "/var/cache/margo-lite-tests"))
RELEASES = {"scarthgap": "2.8", "wrynose": "2.18"}
MANIFEST = "meta/recipes-devtools/python/python3/python3-manifest.json"

needs_snapshots = pytest.mark.skipif(
    not (SNAPSHOTS / "README.md").is_file(),
    reason=f"needs the layer snapshots in {SNAPSHOTS} (MARGO_LITE_YOCTO_SNAPSHOTS)",
)
# bitbake runs with the host's Python and does not depend on the test environment.
once = pytest.mark.skipif(
    Path(sys.prefix).name == ".venv-pypi",
    reason="bitbake does not depend on the test environment: checked once, in .venv-debian",
)


def _variable(text: str, name: str) -> str:
    match = re.search(rf'^{re.escape(name)} \+?\?*= "((?:[^"\\]|\\[\s\S])*)"', text, re.MULTILINE)
    assert match, f"{name} missing"
    return match.group(1).replace("\\\n", " ")


def _rdepends(recipe: Path) -> set[str]:
    return set(_variable(recipe.read_text(), "RDEPENDS:${PN}").split())


def _manifest(release: str) -> dict:
    archive = SNAPSHOTS / f"openembedded-core-{release}.tar.xz"
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.name.endswith(MANIFEST))
        return pystdlib.load_manifest(tar.extractfile(member).read().decode())


# --- quick: what the recipe states ----------------------------------------------------------


@needs_snapshots
def test_rdepends_are_exactly_the_stdlib_packages_the_code_imports() -> None:
    modules = pystdlib.imported_modules((ROOT / "margo_lite").rglob("*.py"))
    assert {"json", "logging", "ssl", "tarfile"} <= modules  # the scan sees real imports
    needed: dict[str, set[str]] = {}
    for release in RELEASES:
        for module, package in pystdlib.packages_for(_manifest(release), modules).items():
            needed.setdefault(package, set()).add(f"{module} ({release})")
    listed = {name for name in _rdepends(RECIPE) if name.startswith("python3-")}
    third_party = {"python3-dulwich", "python3-pyyaml", "python3-urllib3"}
    missing = {package: sorted(why) for package, why in needed.items() if package not in listed}
    assert missing == {}, "add to RDEPENDS in the recipe"
    assert listed - third_party - set(needed) == set(), "no import needs these"
    assert "python3-misc" not in needed, "python3-misc is a catch-all: name the module"


@needs_snapshots
def test_the_import_check_notices_a_new_import(tmp_path: Path) -> None:
    """The check above can fail: an import of a module in another package shows up."""
    (tmp_path / "new.py").write_text("import sqlite3\nfrom xml.dom import minidom\n")
    found = pystdlib.packages_for(
        _manifest("wrynose"), pystdlib.imported_modules([tmp_path / "new.py"])
    )
    assert found == {"sqlite3": "python3-sqlite3", "xml.dom": "python3-xml"}


def test_recipe_states_systemd_and_the_real_license() -> None:
    text = RECIPE.read_text()
    assert re.search(r"^inherit .*\bsystemd\b.*\bfeatures_check\b", text, re.MULTILINE)
    assert _variable(text, "REQUIRED_DISTRO_FEATURES") == "systemd"
    md5 = hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest()
    assert _variable(text, "LIC_FILES_CHKSUM") == f"file://LICENSE;md5={md5}"
    assert "AUTOREV" not in text and "${WORKDIR}/git" not in text


def test_the_pinned_commit_is_a_release_of_this_version_with_this_license() -> None:
    """SRCREV names a commit of this repository's history holding the version and license."""
    srcrev = _variable(RECIPE.read_text(), "SRCREV")
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "--is-inside-work-tree"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    ancestor = subprocess.run([*git, "merge-base", "--is-ancestor", srcrev, "HEAD"])
    assert ancestor.returncode == 0, f"SRCREV {srcrev} is not in this branch's history"

    def show(path: str) -> bytes:
        shown = subprocess.run([*git, "show", f"{srcrev}:{path}"], capture_output=True, check=True)
        return shown.stdout

    assert show("LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert f'__version__ = "{__version__}"'.encode() in show("margo_lite/__init__.py")


OELINT_SUPPRESSED = (
    # It checks HOMEPAGE by fetching it; tests have no internet.
    "oelint.vars.homepageping",
    # margo-lite is a service for the target: a native or nativesdk variant makes no sense.
    "oelint.var.bbclassextend",
)


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_oelint_adv_finds_nothing(release: str) -> None:
    tool = Path(sys.prefix) / "bin" / "oelint-adv"
    if not tool.exists():
        pytest.skip("oelint-adv is in .venv-pypi only (tools/setup-host)")
    recipes = sorted(str(p) for p in LAYER.glob("recipes-*/*/*.bb"))
    suppress = [arg for rule in OELINT_SUPPRESSED for arg in ("--suppress", rule)]
    result = subprocess.run(
        [str(tool), "--quiet", "--release", release, *suppress, *recipes],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- slow: the real bitbake -----------------------------------------------------------------


def _extract(archive: Path, into: Path) -> Path:
    """The snapshot's top folder, extracted once per run of the module."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(into), "-xJf", str(archive)], check=True, timeout=600)
    (top,) = list(into.iterdir())
    return top


def _checkout_tarball(path: Path) -> Path:
    """The tracked files as they are in the working tree, as margo-lite-<version>/."""
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    with tarfile.open(path, "w:gz") as tar:
        for name in filter(None, files.decode().split("\0")):
            if (ROOT / name).exists():
                tar.add(ROOT / name, f"margo-lite-{__version__}/{name}", recursive=False)
    return path


def _dulwich_sdist(mirror: Path) -> None:
    """The PyPI release the recipe names, in a folder bitbake uses as its premirror.

    Cached beside the other test downloads: CI fetches it from PyPI once per machine.
    """
    name = f"dulwich-{DULWICH_VERSION}.tar.gz"
    cached = CACHE / "pypi" / name
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--disable-pip-version-check", f"dulwich=={DULWICH_VERSION}",
             "-d", str(cached.parent)],
            check=True,
            timeout=300,
        )  # fmt: skip
    mirror.mkdir(parents=True, exist_ok=True)
    shutil.copy(cached, mirror / name)


class Build:
    """A bitbake build folder for one release: oe-core, this layer, the test layer."""

    def __init__(self, release: str, work: Path) -> None:
        self.release = release
        self.top = work / release
        snap = self.top / "layers"
        bitbake = _extract(SNAPSHOTS / f"bitbake-{RELEASES[release]}.tar.xz", snap / "bitbake")
        core = _extract(SNAPSHOTS / f"openembedded-core-{release}.tar.xz", snap / "oe-core")
        self.bin = bitbake / "bin"
        conf = self.top / "build" / "conf"
        conf.mkdir(parents=True)
        layers = " ".join(str(p) for p in (core / "meta", LAYER, TEST_LAYER))
        (conf / "bblayers.conf").write_text(
            f'BBPATH = "${{TOPDIR}}"\nBBFILES ?= ""\nBBLAYERS = "{layers}"\n'
        )
        (conf / "local.conf").write_text(
            "\n".join(
                [
                    'MACHINE = "qemux86-64"',
                    'INIT_MANAGER = "systemd"',
                    'BB_NO_NETWORK = "1"',
                    # The sanity class refuses to run as root (CI runs as root).
                    'INHERIT:remove = "sanity"',
                    # uninative is a prebuilt loader for native tools: a download, not needed
                    # to parse or unpack.
                    'INHERIT:remove = "uninative"',
                    f'DL_DIR = "{work}/downloads"',
                    f'SSTATE_DIR = "{work}/sstate"',
                    f'PREMIRRORS:prepend = "https?://.*/.* file://{work}/mirror/ "',
                    f'MARGO_LITE_SRC_URI = "file://{work}/margo-lite-{__version__}.tar.gz"',
                    'BB_NUMBER_THREADS = "2"',
                    'BB_NUMBER_PARSE_THREADS = "2"',
                    "",
                ]
            )
        )

    def bitbake(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        env = {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "en_US.UTF-8",
            "HOME": str(self.top),
        }
        return subprocess.run(
            ["bitbake", *args],
            cwd=self.top / "build",
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("yocto")
    _checkout_tarball(work / f"margo-lite-{__version__}.tar.gz")
    _dulwich_sdist(work / "mirror")
    return work


@pytest.fixture(scope="module", params=sorted(RELEASES))
def build(request: pytest.FixtureRequest, work: Path) -> Build:
    build = Build(request.param, work)
    # The first call parses every recipe (and says so); the later ones use its cache.
    env = build.bitbake("-e", "margo-lite")
    assert env.returncode == 0, env.stdout[-4000:] + env.stderr[-4000:]
    build.env = env.stdout
    build.parse_output = env.stderr + "\n".join(
        line for line in env.stdout.splitlines() if re.match(r"^(NOTE|WARNING|ERROR|Parsing)", line)
    )
    return build


def _ours(output: str) -> list[str]:
    """Warnings and errors that name a file of this layer (or of the test layer)."""
    lines = [line for line in output.splitlines() if re.match(r"^(WARNING|ERROR):", line)]
    return [line for line in lines if str(LAYER) in line or "margo-lite" in line]


def _slow(fn):
    for mark in (pytest.mark.slow, needs_snapshots, once):
        fn = mark(fn)
    return fn


@_slow
def test_bitbake_parses_the_layer_without_a_word(build: Build) -> None:
    summary = re.search(r"^Parsing of \d+ \.bb files complete.*$", build.parse_output, re.MULTILINE)
    assert summary and summary.group(0).endswith(" 0 errors."), build.parse_output[-4000:]
    assert _ours(build.parse_output) == []


@_slow
def test_every_rdepends_resolves_to_a_provider(build: Build) -> None:
    values = dict(re.findall(r'^([A-Za-z0-9_:${}-]+)="(.*)"$', build.env, re.MULTILINE))
    rdepends = set(values["RDEPENDS:margo-lite"].split())
    assert rdepends >= _rdepends(RECIPE) - {"${MARGO_LITE_ENGINE}"} | {"podman"}
    assert "systemd" in values["DISTRO_FEATURES"].split()
    assert values["SYSTEMD_SERVICE:margo-lite"] == "margo-lite.service"
    # The dependency graph of the whole runtime closure: bitbake fails with "Nothing
    # RPROVIDES" for any name no recipe provides. podman comes from the test layer's
    # stand-in (meta-virtualization is not among the snapshots).
    graph = build.bitbake("-g", "margo-lite")
    assert graph.returncode == 0, graph.stdout[-4000:] + graph.stderr[-4000:]
    assert "RPROVIDES" not in graph.stdout + graph.stderr
    built = set((build.top / "build" / "pn-buildlist").read_text().split())
    assert {"margo-lite", "python3-dulwich", "python3-pyyaml", "gnupg", "podman"} <= built


@_slow
@pytest.mark.parametrize("recipe", [RECIPE, DULWICH], ids=["margo-lite", "python3-dulwich"])
def test_fetch_unpack_and_patch_run_from_local_sources(build: Build, recipe: Path) -> None:
    # -b runs the recipe's own tasks (fetch, unpack, patch) and not those of other recipes:
    # do_patch would else build quilt-native, which needs the network. bitbake says so in a
    # warning of its own, which is not the layer's.
    result = build.bitbake("-b", str(recipe), "-c", "patch")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    warnings = [w for w in _ours(output) if "Buildfile specified" not in w]
    assert warnings == []
    pn = recipe.stem.split("_")[0]
    workdir = next((build.top / "build").glob(f"tmp*/work/*/{pn}/*"))
    unpacked = {p.name for p in workdir.rglob("*") if p.is_file()}
    assert ("margo-lite.service" if pn == "margo-lite" else "COPYING") in unpacked
