"""The whole hostile-input corpus fed to the running agent at once.

One commit holds every desired-state and canonical-document case of tests/corpus/ beside
the good deployment; one `margo-lite run` must report each case's deployment Failed with the
case's code, install the good deployment in the engine, stay up while it does, and stop on
SIGTERM without a traceback.
"""

from __future__ import annotations

import contextlib

import pytest

from tests.corpus.corpus import cases_of, desired_tree
from tests.support.engines import IMAGE
from tests.support.rig import wait_state
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def test_the_agent_reports_every_case_and_installs_the_good_deployment(rig):
    tree = desired_tree()
    tree["good/app/compose.yaml"] = tree["good/app/compose.yaml"].replace(
        b"localhost/testimg:1", IMAGE.encode()
    )
    rig.upstream.commit(dict(tree))
    expected: dict[str, set[str]] = {}
    for case in [*cases_of("desired-state"), *cases_of("canonical")]:
        for dep_id in case.ids:
            expected.setdefault(dep_id, set()).update({case.code, *case.also})
    assert len(expected) >= 40

    agent = rig.start()
    wait_state(rig, "corpus-good", "Installed", timeout=300)

    def failed(dep_id: str) -> bool:
        last = rig.last(dep_id)
        return bool(last) and last["status"]["state"] == "Failed"

    with contextlib.suppress(AssertionError):  # on a timeout, `wrong` below names each case
        wait_for(lambda: all(map(failed, expected)), timeout=300, what="every case Failed")
    assert agent.poll() is None, rig.log_text()[-3000:]  # `run` is still up
    assert [c["Labels"]["io.margo.deployment"] for c in rig.running("corpus-good")] == [
        "corpus-good"
    ]
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
    assert rig.stop() == 0
    assert "Traceback" not in rig.log_text()
