"""The whole hostile-input corpus fed to the running agent at once.

One commit holds every desired-state case of tests/corpus/ beside the good deployments; one
`margo-lite once` must report each case's deployment Failed with the case's code, install
the good deployment in the engine, and end without a traceback.
"""

from __future__ import annotations

import pytest

from tests.corpus.corpus import cases_of, desired_tree
from tests.support.engines import IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def test_the_agent_reports_every_case_and_installs_the_good_deployment(rig):
    tree = desired_tree()
    tree["good/app/compose.yaml"] = tree["good/app/compose.yaml"].replace(
        b"localhost/testimg:1", IMAGE.encode()
    )
    rig.upstream.commit(dict(tree))
    result = rig.once()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # some deployments failed: exit 1
    assert "Traceback" not in output

    assert rig.last("corpus-good")["status"]["state"] == "Installed"
    assert [c["Labels"]["io.margo.deployment"] for c in rig.running("corpus-good")] == [
        "corpus-good"
    ]
    expected: dict[str, set[str]] = {}
    for case in [*cases_of("desired-state"), *cases_of("canonical")]:
        for dep_id in case.ids:
            expected.setdefault(dep_id, set()).update({case.code, *case.also})
    assert len(expected) >= 40
    wrong = {}
    for dep_id, codes in sorted(expected.items()):
        last = rig.last(dep_id)
        got = last["status"] if last else None
        if got is None or got["state"] != "Failed" or got["error"]["code"] not in codes:
            wrong[dep_id] = (sorted(codes), got)
    assert not wrong, wrong
    # nothing of a failed case runs
    running = {c["Labels"]["io.margo.deployment"] for c in rig.containers()}
    assert not running & set(expected)
