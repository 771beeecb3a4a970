"""The fault table of docs/proof.md is tests/support/faults.py, and every claim in it is linked to
tests that exist and say they prove it.

A row's claims are data; each claim names node ids (a name without a parameter stands for
all of them), the first agent-level (tests/test_faults*.py). Checked here: docs/proof.md holds
exactly the rendered table; each node id named collects; each agent-level test named carries
`@proves(that claim)`; every agent-level fault test proves a claim that names it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import test_faults, test_faults_schedule
from tests.support import faults

ROOT = Path(__file__).resolve().parent.parent
AGENT_LEVEL = {"test_faults.py": test_faults, "test_faults_schedule.py": test_faults_schedule}


def collected(files: set[str]) -> set[str]:
    """Node ids pytest collects from these test files ("file.py::name[param]")."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"]
        + [f"tests/{f}" for f in sorted(files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {line.removeprefix("tests/") for line in out.stdout.splitlines() if "::" in line}


def claims_of(function) -> set[str]:
    return {c for mark in getattr(function, "pytestmark", []) if mark.name == "proves"
            for c in mark.args}  # fmt: skip


def test_the_proof_page_holds_the_rendered_table():
    page = (ROOT / "docs" / "proof.md").read_text()
    start = page.index("## What margo-lite does when things fail")
    section = page[start : page.index("\n## ", start + 1)]
    assert faults.render() in section, "docs/proof.md's fault table differs: paste faults.render()"
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) == len(faults.ROWS) + 2  # header, rule, the rows: nothing else


def test_every_claim_links_to_tests_that_exist_and_prove_it():
    claims = [claim for row in faults.ROWS for claim in row.claims]
    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids)), "claim ids repeat"
    named = {test for claim in claims for test in claim.tests}
    exist = collected({test.split("::")[0] for test in named})
    # a name without parameters stands for all of its parameters
    missing = {t for t in named if t not in exist and not any(e.startswith(t + "[") for e in exist)}
    assert not missing, f"named in the table, not collected: {sorted(missing)}"
    for claim in claims:
        first = claim.tests[0].split("::")[0]
        assert first in AGENT_LEVEL, f"{claim.id}: its first proof is not agent-level"
        for test in claim.tests:
            file, name = test.split("::")
            if file in AGENT_LEVEL:
                function = getattr(AGENT_LEVEL[file], name.split("[")[0])
                assert claim.id in claims_of(function), f"{test} lacks @proves({claim.id!r})"


def test_every_agent_level_fault_test_proves_a_claim_that_names_it():
    names = {
        (test.split("::")[0], test.split("::")[1].split("[")[0]): claim.id
        for row in faults.ROWS
        for claim in row.claims
        for test in claim.tests
    }
    known = {claim.id for row in faults.ROWS for claim in row.claims}
    for file, module in AGENT_LEVEL.items():
        tests = [(n, f) for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
        assert tests
        for name, function in tests:
            proved = claims_of(function)
            assert proved, f"{file}::{name} proves no row of the table"
            assert proved <= known, f"{file}::{name}: unknown claims {proved - known}"
            assert (file, name) in names, f"{file}::{name} is named by no claim"


@pytest.mark.parametrize("mutation", ["unknown claim", "missing marker"])
def test_the_check_catches_a_broken_link(mutation, monkeypatch):
    """The check above can fail: a claim the test does not declare, or an unknown one."""
    row = faults.ROWS[0]
    if mutation == "unknown claim":
        claim = faults.Claim("no-such-claim", "x", row.claims[0].tests)
    else:
        claim = faults.Claim(row.claims[0].id, "x", (faults.F + "test_force_push_is_followed",))
    monkeypatch.setattr(faults, "ROWS", (faults.Row(row.fault, row.does, (claim,)),))
    with pytest.raises(AssertionError, match="lacks @proves"):
        test_every_claim_links_to_tests_that_exist_and_prove_it()
