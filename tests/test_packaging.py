"""The systemd unit and the distribution packages, checked with the real tools.

Quick: `systemd-analyze verify` and `security` on the unit, the example configuration,
versions. Slow: building the .deb (lintian) and the .rpm (rpmlint), and installing the
.deb into a Debian 12 root booted with systemd as PID 1 in a podman container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from margo_lite import __version__
from tests.conftest import ROOT, run_cli
from tests.support.wait import wait_for

UNIT = ROOT / "systemd" / "margo-lite.service"
EXAMPLE = ROOT / "packaging" / "config.example.yaml"
MAN_PAGE = ROOT / "packaging" / "margo-lite.1"
YOCTO_RECIPE = ROOT / "packaging" / "yocto" / "recipes-support" / "margo-lite"
YOCTO_RECIPE = YOCTO_RECIPE / f"margo-lite_{__version__}.bb"
CONFIG = "/etc/margo-lite/config.yaml"

# The packages use the distribution's Python and libraries, not this test environment's:
# build and boot them once per `tests/run`, in the Debian environment.
once = pytest.mark.skipif(
    Path(sys.prefix).name == ".venv-pypi",
    reason="packages do not depend on the test environment: checked once, in .venv-debian",
)


def _needs(*tools: str) -> pytest.MarkDecorator:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"needs {', '.join(missing)} (tools/setup-host)"
    )


# --- the unit -------------------------------------------------------------------------------


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root folder laid out as after installing the package, for `systemd-analyze --root`.

    It holds the host's system units (targets the unit refers to), the unit where the
    package puts it, the man page its Documentation= names, and a stand-in executable.
    """
    root = tmp_path / "root"
    units = root / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    shutil.copy(UNIT, units / "margo-lite.service")
    (root / "usr" / "bin").mkdir(parents=True)
    for name in ("bin", "sbin", "lib"):
        (root / name).symlink_to(f"usr/{name}")
    stub = root / "usr" / "bin" / "margo-lite"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    shutil.copy2("/usr/bin/kill", root / "usr" / "bin" / "kill")
    (root / "usr" / "share" / "man" / "man1").mkdir(parents=True)
    shutil.copy(MAN_PAGE, root / "usr" / "share" / "man" / "man1")
    return root


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    # `verify` runs `man` for Documentation=man:...; point it at the root's pages.
    env = {**os.environ, "MANPATH": str(root / "usr" / "share" / "man")}
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@_needs("systemd-analyze")
def test_unit_verifies_without_a_word(unit_root: Path) -> None:
    # systemd-analyze exits 0 even on syntax errors: silence is the pass condition.
    result = _analyze(unit_root, "verify", "margo-lite.service")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@_needs("systemd-analyze")
def test_verify_does_notice_a_mistake(unit_root: Path) -> None:
    """The check above can fail: a bad value is reported on stderr."""
    units = unit_root / "usr" / "lib" / "systemd" / "system"
    broken = UNIT.read_text().replace("WatchdogSec=2min", "WatchdogSec=2 minutes-ish")
    (units / "margo-lite-broken.service").write_text(broken)
    result = _analyze(unit_root, "verify", "margo-lite-broken.service")
    assert "WatchdogSec" in result.stderr or "sec value" in result.stderr, result.stderr


def _install_page() -> str:
    return (ROOT / "docs" / "install.md").read_text()


@_needs("systemd-analyze")
def test_security_score_is_the_one_the_install_page_states(unit_root: Path) -> None:
    result = _analyze(unit_root, "security", "--offline=true", "margo-lite.service")
    score = re.search(r"Overall exposure level for margo-lite\.service: (\d+\.\d)", result.stdout)
    assert score, result.stdout + result.stderr
    stated = re.search(r"rates the unit \*\*(\d+\.\d)", _install_page())
    assert stated, "docs/install.md: 'rates the unit **N.N' missing"
    assert score.group(1) == stated.group(1)


@_needs("systemd-analyze")
def test_every_exposure_kept_is_explained_on_the_install_page(unit_root: Path) -> None:
    result = _analyze(unit_root, "security", "--offline=true", "--json=short", "margo-lite.service")
    kept = {
        row["name"].split("=")[0]
        for row in json.loads(result.stdout)
        if row["set"] is False and row["exposure"] not in (None, "0.0")
    }
    assert kept, "expected some exposures (root user, network access)"
    page = _install_page()
    assert not {name for name in kept if f"`{name}=" not in page}


# --- versions and the example configuration -------------------------------------------------


def test_every_package_carries_the_version_of_the_code() -> None:
    packaging = ROOT / "packaging"
    changelog = (packaging / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"margo-lite ({__version__})")
    spec = (packaging / "rpm" / "margo-lite.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(__version__)}$", spec, re.MULTILINE)
    assert YOCTO_RECIPE.is_file()
    assert f'"margo-lite {__version__}"' in MAN_PAGE.read_text()


def test_yocto_recipe_installs_files_that_exist() -> None:
    recipe = YOCTO_RECIPE.read_text()
    sources = re.findall(r"\$\{S\}/(\S+)", recipe)
    assert "systemd/margo-lite.service" in sources
    assert [path for path in sources if not (ROOT / path).is_file()] == []
    assert re.search(r'^SYSTEMD_SERVICE:\$\{PN\} = "margo-lite.service"$', recipe, re.MULTILINE)


def test_debian_package_depends_on_what_the_issue_names() -> None:
    control = (ROOT / "packaging" / "debian" / "control").read_text()
    depends = re.search(r"^Depends:(.*?)^[A-Z]", control, re.MULTILINE | re.DOTALL)
    assert depends
    names = {d.strip() for d in depends.group(1).replace("\n", " ").split(",")}
    required = {"python3 (>= 3.11)", "python3-dulwich", "python3-urllib3", "python3-yaml"}
    assert required | {"gpgv", "podman | docker.io"} <= names
    assert re.search(r"^Architecture: all$", control, re.MULTILINE)
    # `margo-lite demo` builds its image from a static busybox, and `--api v1` runs a local
    # OCI registry; the agent needs neither
    assert re.search(r"^Suggests: busybox-static, docker-registry$", control, re.MULTILINE)


def _cli_surface() -> dict[str, set[str]]:
    """Each command of the parser (and "" for the top level) -> its option strings."""
    import argparse

    from margo_lite.cli import build_parser

    parser = build_parser()
    surface = {"": {o for a in parser._actions for o in a.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                surface[name] = {o for a in sub._actions for o in a.option_strings} - {
                    "-h",
                    "--help",
                }
    return surface


def test_man_page_documents_exactly_the_commands_and_options_of_the_cli() -> None:
    """Checked against the parser the command itself uses, so the page cannot drift."""
    page = MAN_PAGE.read_text()
    commands = re.search(r"^\.SH COMMANDS$(.*?)^\.SH ", page, re.MULTILINE | re.DOTALL)
    assert commands
    entries = re.findall(r"^\.TP\n\.BR? (.*)$", commands.group(1), re.MULTILINE)
    documented = {e.split()[0].replace("\\-", "-"): e.replace("\\-", "-") for e in entries}
    surface = _cli_surface()
    assert set(documented) == set(surface) - {""}
    for command, options in surface.items():
        where = documented.get(command, page.replace("\\-", "-"))
        assert {o for o in options if o not in where} == set(), command or "top level"


def test_every_homepage_field_points_at_the_project() -> None:
    url = re.search(r"^url = (\S+)$", (ROOT / "setup.cfg").read_text(), re.MULTILINE)
    assert url and "margo.org" not in url.group(1)
    fields = {
        "debian/control": r"^Homepage: (\S+)$",
        "debian/copyright": r"^Source: (\S+)$",
        "rpm/margo-lite.spec": r"^URL:\s+(\S+)$",
        "yocto/recipes-support/margo-lite/margo-lite_0.1.0.bb": r'^HOMEPAGE = "(\S+)"$',
    }
    for path, pattern in fields.items():
        found = re.search(pattern, (ROOT / "packaging" / path).read_text(), re.MULTILINE)
        assert found and found.group(1) == url.group(1), path


def test_debian_test_step_has_its_build_dependencies_and_honours_nocheck(tmp_path: Path) -> None:
    control = (ROOT / "packaging" / "debian" / "control").read_text()
    build_depends = re.search(r"^Build-Depends:(.*?)^\S", control, re.MULTILINE | re.DOTALL)
    assert build_depends
    for library in ("python3-dulwich", "python3-urllib3", "python3-yaml"):
        assert f"{library} <!nocheck>" in build_depends.group(1)
    if shutil.which("make") is None:
        pytest.skip("needs make")
    shutil.copytree(ROOT / "packaging" / "debian", tmp_path / "debian", symlinks=True)

    def test_step(options: str) -> str:
        return subprocess.run(
            ["make", "-n", "-f", "debian/rules", "override_dh_auto_test"],
            cwd=tmp_path,
            env={**os.environ, "DEB_BUILD_OPTIONS": options},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "import_module" in test_step("parallel=2")
    skipped = test_step("nocheck parallel=2")
    assert "import_module" not in skipped and "skipped" in skipped


def test_example_configuration_asks_for_the_device_id(tmp_path: Path) -> None:
    result = run_cli("-c", str(EXAMPLE), "check-config")
    assert result.returncode == 2
    assert "device.id" in result.stderr and "Traceback" not in result.stderr


def test_example_configuration_is_valid_once_filled_in(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["device"].update(id="gw-001", state_dir=str(tmp_path / "state"))
    data["wos"]["url"] = "https://wos.example.com"
    data["git"]["url"] = "https://git.example.com/devices/gw-001.git"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    result = run_cli("-c", str(config), "check-config")
    assert result.returncode == 0, result.stderr


# --- building the packages ------------------------------------------------------------------


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The .deb and the .rpm, built by tools/build-packages from the tracked files."""
    out = tmp_path_factory.mktemp("packages")
    result = subprocess.run(
        [str(ROOT / "tools" / "build-packages"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    debs, rpms = list(out.glob("*.deb")), list(out.glob("*.rpm"))
    assert len(debs) == 1 and len(rpms) == 1, (debs, rpms)
    return {"deb": debs[0], "rpm": rpms[0], "output": result.stdout}


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.mark.slow
@once
@_needs("dpkg-buildpackage", "lintian", "rpmbuild")
def test_deb_is_architecture_all_with_unit_and_conffile(packages: dict) -> None:
    deb = str(packages["deb"])
    assert packages["deb"].name == f"margo-lite_{__version__}_all.deb"
    assert _out("dpkg-deb", "-f", deb, "Architecture").strip() == "all"
    depends = _out("dpkg-deb", "-f", deb, "Depends")
    for name in (
        "python3-dulwich",
        "python3-urllib3",
        "python3-yaml",
        "gpgv",
        "podman | docker.io",
    ):
        assert name in depends
    files = _out("dpkg-deb", "-c", deb)
    assert "./lib/systemd/system/margo-lite.service" in files
    assert "./usr/bin/margo-lite" in files
    conffiles = subprocess.run(
        f"dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert conffiles.split() == ["/etc/margo-lite/config.example.yaml"]
    assert "./usr/share/man/man1/margo-lite.1.gz" in files


@pytest.mark.slow
@once
@_needs("dpkg-buildpackage", "lintian", "rpmbuild")
def test_lintian_finds_nothing(packages: dict) -> None:
    # tools/build-packages already failed on errors and warnings; look at every level.
    result = subprocess.run(
        ["lintian", "--info", "--pedantic", str(packages["deb"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert tags == []


@pytest.mark.slow
@once
@_needs("dpkg-buildpackage", "lintian", "rpmbuild")
def test_rpm_is_noarch_with_generated_python_requires_and_systemd_scriptlets(
    packages: dict,
) -> None:
    rpm = str(packages["rpm"])
    assert _out("rpm", "-qp", "--queryformat", "%{ARCH}", rpm) == "noarch"
    requires = _out("rpm", "-qp", "--requires", rpm)
    for dist in ("dulwich", "urllib3", "pyyaml"):
        assert re.search(rf"^python3\.\d+dist\({dist}\) >= ", requires, re.MULTILINE), requires
    files = _out("rpm", "-qlp", rpm).split()
    assert "/usr/lib/systemd/system/margo-lite.service" in files
    assert "/usr/bin/margo-lite" in files
    assert "/etc/margo-lite/config.example.yaml" in _out("rpm", "-qcp", rpm).split()
    assert [Path(f).name for f in _out("rpm", "-qp", "--licensefiles", rpm).split()] == ["LICENSE"]
    scripts = _out("rpm", "-qp", "--scripts", rpm)
    assert "preset margo-lite.service" in scripts
    assert "disable --now margo-lite.service" in scripts
    if shutil.which("rpmlint"):
        assert "0 errors, 0 warnings" in packages["output"]


# --- for real: the .deb on Debian 12 with systemd as PID 1 ----------------------------------

# Bump the ":1" (and the tarball's "-1") when the debootstrap command below changes.
IMAGE = "localhost/margo-lite-test-bookworm:1"
CACHE = Path(os.environ.get("MARGO_LITE_TEST_CACHE", "/var/cache/margo-lite-tests"))
HANG_FILE = "/run/margo-lite-test-hang"


def _debian_mirror() -> str:
    """The host's Debian mirror (CI has no other internet access)."""
    sources = Path("/etc/apt/sources.list.d")
    texts = [p.read_text() for p in sorted(sources.glob("*.sources"))] if sources.is_dir() else []
    for text in texts:
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _podman(*args: str, env: dict, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, **kw
    )


def _ensure_image(env: dict) -> None:
    """A minimal Debian 12 with systemd, made by debootstrap once and cached."""
    if _podman("image", "exists", IMAGE, env=env).returncode == 0:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "bookworm-systemd-1.tar"
    if not tarball.exists():
        rootfs = CACHE / "rootfs.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
                str(rootfs),
                _debian_mirror(),
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    result = _podman("import", str(tarball), IMAGE, env=env, timeout=600)
    assert result.returncode == 0, result.stderr


class Gateway:
    """A booted Debian 12 container with systemd as PID 1."""

    def __init__(self, name: str, env: dict) -> None:
        self.name = name
        self.env = env

    def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> str:
        result = _podman("exec", self.name, "sh", "-c", script, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            tail = ["journalctl", "-q", "-n", "40", "-o", "short-monotonic"]
            journal = _podman("exec", self.name, *tail, env=self.env).stdout
            pytest.fail(f"{script}\n{result.stdout}{result.stderr}\n-- journal:\n{journal}")
        return result.stdout.strip()

    def copy_in(self, source: Path, target: str) -> None:
        result = _podman("cp", str(source), f"{self.name}:{target}", env=self.env)
        assert result.returncode == 0, result.stderr

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value margo-lite")

    def now(self) -> str:
        return self.sh("date +%s")

    def journal(self, since: str) -> str:
        return self.sh(f"journalctl -q -u margo-lite --since @{since} -o cat")


def _desired_repo(path: Path) -> Path:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(
        [*git, "-C", str(path), "commit", "-q", "--allow-empty", "-m", "empty"], check=True
    )
    return path


def _config(interval: int, state_dir: str = "/var/lib/margo-lite") -> str:
    return yaml.safe_dump(
        {
            "device": {"id": "gw-systemd", "state_dir": state_dir},
            "wos": {"url": "http://127.0.0.1:9"},
            "git": {"url": "file:///srv/desired"},
            "poll": {"interval": interval},
        }
    )


@pytest.fixture(scope="module")
def gateway(packages: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("gateway")
    conf = work / "containers.conf"  # see the sandbox notes beside the contract; tests only
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    _ensure_image(env)
    name = f"margo-lite-systemd-{uuid.uuid4().hex[:8]}"
    # --privileged only so that podman inside can run a container for the sandbox test.
    started = _podman(
        "run",
        "-d",
        "--privileged",
        "--name",
        name,
        "--systemd=always",
        IMAGE,
        "/sbin/init",
        env=env,
    )
    assert started.returncode == 0, started.stderr
    gw = Gateway(name, env)
    try:
        wait_for(
            lambda: gw.sh("systemctl is-system-running", check=False) in ("running", "degraded"),
            timeout=120,
            what="systemd to boot",
        )
        failed = "systemctl list-units --failed --plain --no-legend --no-pager"
        gw.fresh = {"system_before": gw.sh("systemctl is-system-running", check=False)}
        gw.fresh["failed_before"] = gw.sh(failed, check=False)
        gw.copy_in(packages["deb"], "/tmp/")
        gw.sh(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"/tmp/{packages['deb'].name} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)",
            timeout=900,
        )
        # As an operator finds it right after installing, before writing a configuration.
        gw.fresh.update(
            system=gw.sh("systemctl is-system-running", check=False),
            failed=gw.sh(failed, check=False),
            active=gw.show("ActiveState"),
            status=gw.sh("systemctl status --no-pager margo-lite", check=False),
        )
        _configure(gw, work)
        yield gw
    finally:
        _podman("rm", "-f", "-t", "0", name, env=env)


def _configure(gw: Gateway, work: Path) -> None:
    """What an operator does after installing: fill in the configuration. Plus test hooks."""
    gw.copy_in(_desired_repo(work / "desired"), "/srv/desired")
    (work / "config.yaml").write_text(_config(60))
    gw.copy_in(work / "config.yaml", CONFIG)
    gw.sh(
        "mkdir -p /etc/systemd/system/margo-lite.service.d && printf '%s\\n' '[Service]' "
        f"'WatchdogSec=6s' 'Environment=MARGO_LITE_TEST_HANG_FILE={HANG_FILE}' "
        "> /etc/systemd/system/margo-lite.service.d/test.conf && systemctl daemon-reload"
    )
    gw.sh("systemctl restart margo-lite", check=False)
    wait_for(
        lambda: gw.show("ActiveState") in ("active", "failed", "inactive"),
        timeout=60,
        what="margo-lite to start or fail",
    )


def _slow(fn):
    """Marks of the tests on the booted gateway: slow, a container, once per tests/run."""
    marks = (pytest.mark.slow, pytest.mark.engine, once)
    for mark in (*marks, _needs("podman", "debootstrap", "dpkg-buildpackage", "lintian")):
        fn = mark(fn)
    return fn


@_slow
def test_deb_installs_with_dependencies_from_debian_only(gateway: Gateway) -> None:
    sources = gateway.sh("cat /etc/apt/sources.list; ls /etc/apt/sources.list.d")
    assert sources.split() == ["deb", _debian_mirror(), "bookworm", "main"]
    assert gateway.sh("dpkg-query -W -f '${Version}' python3-dulwich").startswith("0.21.2")
    assert gateway.sh("dpkg-query -W -f '${Status}' margo-lite") == "install ok installed"
    assert gateway.sh("systemctl is-enabled margo-lite") == "enabled"


@_slow
def test_installed_command_line_works(gateway: Gateway) -> None:
    assert gateway.sh("margo-lite --version") == f"margo-lite {__version__}"
    assert gateway.sh("margo-lite check-config").startswith("configuration OK")


@_slow
def test_service_is_active_and_a_hung_loop_is_restarted_by_the_watchdog(gateway: Gateway) -> None:
    wait_for(lambda: gateway.show("ActiveState") == "active", timeout=60, what="active")
    pid, restarts = gateway.show("MainPID"), int(gateway.show("NRestarts"))
    since = gateway.now()
    gateway.sh(f"touch {HANG_FILE}")
    try:
        wait_for(
            lambda: "Watchdog timeout" in gateway.sh(f"journalctl -q --since @{since} -o cat"),
            timeout=60,
            what="the watchdog to fire",
        )
    finally:
        gateway.sh(f"rm -f {HANG_FILE}")
    wait_for(
        lambda: (
            int(gateway.show("NRestarts")) > restarts and gateway.show("ActiveState") == "active"
        ),
        timeout=120,
        what="the restarted service to be active",
    )
    assert gateway.show("MainPID") != pid


@_slow
def test_reload_rereads_the_configuration(gateway: Gateway, tmp_path: Path) -> None:
    wait_for(lambda: gateway.show("ActiveState") == "active", timeout=60, what="active")
    pid, restarts = gateway.show("MainPID"), gateway.show("NRestarts")
    (tmp_path / "config.yaml").write_text(_config(30))
    gateway.copy_in(tmp_path / "config.yaml", "/etc/margo-lite/config.yaml")
    since = gateway.now()
    gateway.sh("systemctl reload margo-lite")
    # The agent logs a line naming the reload once it has re-read the file.
    wait_for(
        lambda: (
            re.search(r"reload", gateway.journal(since), re.IGNORECASE)
            and gateway.show("ActiveState") == "active"
        ),
        timeout=60,
        what="the agent to log the reload",
    )
    assert (gateway.show("MainPID"), gateway.show("NRestarts")) == (pid, restarts)


@_slow
def test_sandbox_lets_the_podman_cli_manage_containers(gateway: Gateway, tmp_path: Path) -> None:
    """The unit's sandbox, with a podman command in place of the agent, one service per step.

    Each step is a new service run, so a new mount namespace: that is the agent restarting.
    """
    image = tmp_path / "busybox"
    (image / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", image / "bin" / "busybox")
    for tool in ("sh", "sleep", "echo"):
        (image / "bin" / tool).symlink_to("busybox")
    subprocess.run(["tar", "-C", str(image), "-cf", str(tmp_path / "bb.tar"), "."], check=True)
    gateway.copy_in(tmp_path / "bb.tar", "/tmp/bb.tar")
    gateway.sh("podman import -q /tmp/bb.tar localhost/bb:1 >/dev/null", timeout=300)
    steps = {
        # --cgroups=disabled only because this podman runs nested in a container
        "run": "podman run -d --name sbx --cgroups=disabled localhost/bb:1 /bin/sleep 600",
        "exec": "podman exec sbx /bin/echo exec-ok",
        "rm": "podman rm -f -t 0 sbx",
    }
    for step, command in steps.items():
        unit = f"/etc/systemd/system/margo-lite-sandbox-{step}.service"
        gateway.sh(
            # (no RuntimeDirectory=: it would remove the agent's /run/margo-lite on its stop)
            "sed -e '/^Type=/d;/^NotifyAccess=/d;/^WatchdogSec=/d;/^ExecReload=/d;/^Restart/d' "
            "-e '/^RuntimeDirectory/d' "
            f"-e 's|^ExecStart=.*|Type=oneshot\\nExecStart=/usr/bin/{command}|' "
            f"/lib/systemd/system/margo-lite.service > {unit}"
        )
    gateway.sh("systemctl daemon-reload")
    for step in steps:
        gateway.sh(f"systemctl start margo-lite-sandbox-{step}", timeout=300)
    assert "exec-ok" in gateway.sh("journalctl -q -u margo-lite-sandbox-exec -o cat")
    # and nothing the sandbox refused showed on podman's stderr (as "Failed to set rlimits")
    assert "Failed" not in gateway.sh("journalctl -q -u 'margo-lite-sandbox-*' -o cat")
    assert gateway.sh("podman ps -a --format '{{.Names}}'") == ""


@_slow
def test_a_fresh_install_waits_for_its_configuration_without_degrading(gateway: Gateway) -> None:
    fresh = gateway.fresh
    assert fresh["active"] == "inactive"
    assert f"ConditionPathExists={CONFIG} was not met" in fresh["status"]
    assert (fresh["system"], fresh["failed"]) == (fresh["system_before"], fresh["failed_before"])
    assert fresh["system"] == "running"


@_slow
def test_status_shows_the_last_poll_though_the_sandbox_makes_run_read_only(
    gateway: Gateway,
) -> None:
    wait_for(lambda: gateway.show("ActiveState") == "active", timeout=60, what="active")
    assert gateway.show("ProtectSystem") == "strict"  # /run is read-only for the agent...
    assert gateway.sh("stat -c %a /run/margo-lite") == "700"  # ...but its own folder
    wait_for(
        lambda: re.search(r"^last poll +\d{4}-", gateway.sh("margo-lite status"), re.MULTILINE),
        timeout=120,
        what="margo-lite status to show the first poll",
    )


@_slow
def test_a_state_dir_the_sandbox_forbids_stops_with_one_line_and_no_loop(
    gateway: Gateway, tmp_path: Path
) -> None:
    elsewhere = "/srv/margo-elsewhere"
    (tmp_path / "config.yaml").write_text(_config(60, state_dir=elsewhere))
    gateway.copy_in(tmp_path / "config.yaml", CONFIG)
    since = gateway.now()
    try:
        gateway.sh("systemctl restart margo-lite", check=False)
        # "failed" is final: a unit to be restarted shows "activating" (auto-restart).
        wait_for(lambda: gateway.show("ActiveState") == "failed", timeout=60, what="failed")
        assert gateway.show("ExecMainStatus") == "2"
        # A manual restart resets NRestarts: any count now is an automatic restart.
        assert int(gateway.show("NRestarts")) == 0
        lines = [
            line for line in gateway.journal(since).splitlines() if line.startswith("margo-lite: ")
        ]
        assert lines == [
            f"margo-lite: {CONFIG}: device.state_dir: {elsewhere} is not writable by "
            "margo-lite.service (read-only file system); allow it with a drop-in (systemctl "
            f"edit margo-lite): [Service] ReadWritePaths={elsewhere} [CONFIG_DIR_NOT_WRITABLE]"
        ]
        # check-config, run by the operator, asks systemd about the unit's sandbox.
        checked = gateway.sh("margo-lite check-config 2>&1; echo exit=$?", check=False)
        assert f"ReadWritePaths={elsewhere}" in checked and checked.endswith("exit=2")
    finally:
        (tmp_path / "config.yaml").write_text(_config(60))
        gateway.copy_in(tmp_path / "config.yaml", CONFIG)
        gateway.sh("systemctl reset-failed margo-lite; systemctl restart margo-lite", check=False)
    wait_for(lambda: gateway.show("ActiveState") == "active", timeout=60, what="active again")


@_slow
def test_remove_keeps_state_and_edited_config_and_purge_removes_them(gateway: Gateway) -> None:
    gateway.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq margo-lite", timeout=300)
    assert gateway.sh("systemctl is-active margo-lite", check=False) != "active"
    assert gateway.sh("systemctl is-enabled margo-lite", check=False) != "enabled"
    assert gateway.sh("systemctl start margo-lite 2>&1; echo $?", check=False).endswith("5")
    assert gateway.sh("test -d /var/lib/margo-lite && echo kept") == "kept"
    assert "gw-systemd" in gateway.sh("cat /etc/margo-lite/config.yaml")

    gateway.sh("dpkg --purge margo-lite", timeout=300)
    assert gateway.sh("test -e /var/lib/margo-lite || echo gone") == "gone"
    assert gateway.sh("test -e /etc/margo-lite/config.yaml || echo gone") == "gone"
    wants = "/etc/systemd/system/multi-user.target.wants/margo-lite.service"
    assert gateway.sh(f"test -L {wants} || echo gone") == "gone"
