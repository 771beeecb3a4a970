"""What an idle agent's process loads: dulwich never (a fetch and a read run in forked
children); a restart whose applied revision has nothing to do reaches its idle loop without
tarfile, the desired-state parser or the install path either (they cost RSS and start-up
time on a gateway: `bench/run`).

Each agent runs in a process of its own (the modules a process loaded are the evidence)
against C git's http-backend and the WOS simulator on 127.0.0.1, with an engine twin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from margo_lite.devkit import wossim
from tests.support.gitserver import GitServer, Upstream

ROOT = Path(__file__).resolve().parent.parent

#: What fetching and reading a commit loads: only ever in a forked child (git/forked.py).
DULWICH = ("dulwich", "dulwich.repo", "dulwich.objects", "dulwich.object_store", "dulwich.pack")
#: What a draft device without packages never needs, even when it reads and applies a revision.
NEVER_HERE = (
    "margo_lite.packages",  # the package store: built for the first package, or to prune
    "margo_lite.pgp",
    "margo_lite.archive",
    "margo_lite.v1doc",  # the Margo 1.0 shape, with the OCI references
    "margo_lite.oci",
    "difflib",  # the guess at a misspelt kind
)
#: Modules an idle restart must not load (the first start fetched and read its revision).
NOT_IDLE = (
    *DULWICH,
    "tarfile",  # (bz2 and lzma come with shutil)
    "gzip",
    "difflib",
    "margo_lite.desired",
    "margo_lite.planner",
    "margo_lite.act",
    "margo_lite.heal",
    "margo_lite.policy",
    "margo_lite.ocipull",
    "margo_lite.download",
    "margo_lite.wfmclient",
    "margo_lite.wfmsource",
    "margo_lite.mtls",
)

CHILD = """
import json, sys
from margo_lite import agent, config, valueclass

class Engine:  # no container runs: the start's sweep lists none
    def managed(self):
        return set()

cfg = config.parse_config(json.loads(sys.argv[1]))
parts = valueclass.replace(agent.Parts.build(cfg), backend_factory=Engine)
device = agent.Agent(cfg, parts=parts)
device.start()
for _ in range(3):
    device.tick(poll_now=True)
device.stop()
print(json.dumps({"modules": sorted(sys.modules), "read": device.snapshot is not None}))
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    (tmp_path / "srv").mkdir()
    Upstream(tmp_path / "srv" / "idle.git").commit({"README.md": "no deployments\n"})
    with wossim.WosSimulator() as sim, GitServer(tmp_path / "srv") as git:
        yield sim.url, git.url("idle.git")


def in_child(code: str, *args: str) -> Any:
    """What `code`, run by a python of its own, prints last as JSON: a fresh `sys.modules`."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def run_agent(settings: dict) -> dict:
    return in_child(CHILD, json.dumps(settings))


def test_an_idle_restart_loads_neither_dulwich_nor_the_install_path(tmp_path, servers):
    wos_url, git_url = servers
    settings = {
        "device": {
            "id": "gw-lean",
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
        },
        "wos": {"url": wos_url},
        "git": {"url": git_url},
        "poll": {"interval": "1s", "jitter": 0},
    }
    first = run_agent(settings)
    assert first["read"]  # it fetched the revision and read its files: in forked children
    tip = tmp_path / "state" / "git" / "repo" / "refs" / "heads" / "desired"
    assert len(tip.read_text().strip()) == 40
    assert [m for m in (*DULWICH, *NEVER_HERE) if m in first["modules"]] == []
    assert not (tmp_path / "state" / "packages").exists()

    again = run_agent(settings)

    assert not again["read"]
    assert [m for m in NOT_IDLE if m in again["modules"]] == []


#: What `margo-lite run` imports on its way to the idle loop, the Git client's poll included,
#: and the modules of the start's sweep.
RUN_PATH = (
    "margo_lite.cli",
    "margo_lite.daemon",
    "margo_lite.agent",
    "margo_lite.idlemark",
    "margo_lite.tidy",
    "margo_lite.backends",
    "margo_lite.gitsource",
)
#: shutil loads bz2 and lzma, tempfile loads shutil: margo-lite imports each where it is used;
#: the port check runs after an unclean stop only; typing (0.7 MiB) is for type checkers:
#: margo-lite imports it under `if TYPE_CHECKING:` (urllib3 2 loads it, Debian's 1.26 not);
#: dataclasses and the inspect it loads (1.1 MiB): margo_lite.valueclass stands in.
NOT_ON_RUN_PATH = (
    "shutil",
    "tempfile",
    "bz2",
    "lzma",
    "typing",
    "dataclasses",
    "inspect",
    "margo_lite.portcheck",
    *DULWICH,
)

RUN_CHILD = """
import importlib, json, sys
import urllib3, yaml  # what they load is theirs (urllib3 2 loads tempfile and shutil)

theirs = set(sys.modules)
from margo_lite import cli

for name in sys.argv[1:]:
    importlib.import_module(name)
cli.build_parser().parse_args(["-c", "margo-lite.yaml", "run"])
print(json.dumps(sorted(set(sys.modules) - theirs)))
"""


def test_the_run_command_line_and_idle_steps_load_only_what_they_use():
    modules = in_child(RUN_CHILD, *RUN_PATH)  # what margo-lite's modules added

    assert set(RUN_PATH) <= set(modules)
    assert [m for m in NOT_ON_RUN_PATH if m in modules] == []


BRANCHES = ["main", "release-1.0", "v1.x", "feature/a.b", "team/v2.0-rc.1"]
NOT_BRANCHES = ["a..b", ".hidden", "a/.b", "x.lock", "a/b.lock", "end.", "a/", "x y"]

BRANCH_CHILD = """
import json, sys
from margo_lite import errors, gitsource
from margo_lite.config import GitConfig

verdicts = {}
for name in json.loads(sys.argv[1]):
    try:
        gitsource.GitSource(GitConfig(url="https://example.com/x.git", branch=name), sys.argv[2])
        verdicts[name] = True
    except errors.ConfigError:
        verdicts[name] = False
print(json.dumps({"verdicts": verdicts, "modules": sorted(sys.modules)}))
"""


def check_branches(names: list[str], tmp_path: Path) -> dict:
    return in_child(BRANCH_CHILD, json.dumps(names), str(tmp_path))


def test_dotted_release_branches_are_checked_without_dulwich(tmp_path):
    found = check_branches(BRANCHES, tmp_path)

    assert found["verdicts"] == dict.fromkeys(BRANCHES, True)
    assert [m for m in DULWICH if m in found["modules"]] == []


def test_branch_names_get_git_s_verdict(tmp_path):
    from dulwich.refs import check_ref_format

    found = check_branches(BRANCHES + NOT_BRANCHES, tmp_path)

    assert found["verdicts"] == {
        name: check_ref_format(f"refs/heads/{name}".encode()) for name in BRANCHES + NOT_BRANCHES
    }
    assert not any(found["verdicts"][name] for name in NOT_BRANCHES)
