"""How long planning takes when nothing changed: 100 deployments, 3 components each.

Goal (issue 4): well under 50 ms. Prints the median and worst of repeated runs, and the
parse time of the same document set for scale. Run: python bench/plan.py [deployments]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from margo_lite import desired, planner


def document(i: int) -> dict:
    names = ["db", "api", "web"]
    return {
        "apiVersion": "application.margo.org/v1alpha1",
        "kind": "ApplicationDeployment",
        "metadata": {
            "annotations": {
                "id": f"deployment-{i:04}",
                "applicationId": f"com-example-app-{i}",
                **({desired.DEPENDS_ON: f"deployment-{i - 1:04}"} if i % 10 else {}),
            },
            "name": f"app-{i}",
            "namespace": "bench",
        },
        "spec": {
            "deploymentProfile": {
                "type": "docker-compose",
                "components": [
                    {
                        "name": n,
                        "properties": {"packageLocation": f"https://pkg.example/{i}/{n}.tgz"},
                    }
                    for n in names
                ],
            },
            "parameters": {
                f"p{n}": {
                    "value": f"value-{i}-{n}",
                    "targets": [{"pointer": f"ENV.{n.upper()}_SETTING", "components": [n]}],
                }
                for n in names
            },
        },
    }


def converge(state: desired.DesiredState) -> dict[str, planner.DeploymentRecord]:
    """The records after every step of a first plan succeeded."""
    records: dict[str, planner.DeploymentRecord] = {}
    p = planner.plan(state, records)
    for dp in p.deployments:
        record = planner.planned_record(dp, None)
        assert record is not None
        for step in dp.changes:
            record = planner.succeeded(planner.started(record, step), step)
        records[dp.id] = record
    return records


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    files = {f"apps/{i:04}.yaml": yaml.safe_dump(document(i)).encode() for i in range(count)}
    started = time.perf_counter()
    state = desired.parse_files(files)
    parse_ms = (time.perf_counter() - started) * 1000
    assert len(state.deployments) == count and not state.failures
    records = converge(state)
    assert planner.plan(state, records).changes == ()

    timings = []
    for _ in range(200):
        started = time.perf_counter()
        p = planner.plan(state, records)
        timings.append((time.perf_counter() - started) * 1000)
        assert not p.changes
    print(
        f"plan, {count} deployments x 3 components, nothing changed: "
        f"median {statistics.median(timings):.2f} ms, worst {max(timings):.2f} ms "
        f"({len(timings)} runs; goal: well under 50 ms)"
    )
    print(f"parse of the same {count} documents: {parse_ms:.0f} ms (once per new commit)")


if __name__ == "__main__":
    main()
