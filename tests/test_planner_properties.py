"""Property tests of the planner over generated sets of deployments."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from margo_lite import desired, planner
from margo_lite.planner import Action, DeploymentRecord, State
from tests.support import plans
from tests.support.hypo import examples
from tests.test_desired_docs import doc, env_param, files_of
from tests.test_planner import run

SETTINGS = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
IDS = ["a", "b", "c", "d", "e", "f"]
NAMES = ["web", "db", "cache", "queue"]


@st.composite
def deployment_sets(draw, *, acyclic: bool = True):
    """Documents for a few deployments: components, ENV parameters, dependencies."""
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=5, unique=True))
    documents = []
    for i, dep_id in enumerate(ids):
        names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
        params = {
            f"p{j}": env_param(draw(st.integers(0, 3)), f"V{j}", name)
            for j, name in enumerate(draw(st.lists(st.sampled_from(names), max_size=3)))
        }
        pool = ids[:i] if acyclic else [x for x in IDS if x != dep_id]
        deps = draw(st.lists(st.sampled_from(pool), max_size=2, unique=True)) if pool else []
        documents.append(doc(dep_id, tuple(names), params=params, depends_on=",".join(deps)))
    return documents


def parse(documents) -> desired.DesiredState:
    state = desired.parse_files(files_of(*documents))
    assert state.failures == ()
    return state


@st.composite
def histories(draw, *, acyclic: bool = True):
    """(records after applying an earlier desired state, possibly with failures, the new state)."""
    before = parse(draw(deployment_sets()))
    fail = set()
    for d in before.deployments:
        for c in d.components:
            if draw(st.integers(0, 5)) == 0:
                fail.add((d.id, c.name))
    records = run(planner.plan(before, {}), {}, fail=fail)
    return records, parse(draw(deployment_sets(acyclic=acyclic)))


@SETTINGS
@given(histories())
def test_applying_a_plan_then_planning_again_keeps_everything(history):
    records, state = history
    after = run(planner.plan(state, records), records)
    again = planner.plan(state, after)
    assert again.changes == ()
    assert {s.action for s in plans.steps(again)} <= {Action.KEEP}
    assert set(after) == {d.id for d in state.deployments}
    assert {r.state for r in after.values()} <= {State.INSTALLED}
    for d in state.deployments:
        assert [c.name for c in after[d.id].components] == [c.name for c in d.components]
        assert [c.digest for c in after[d.id].components] == [c.digest for c in d.components]


@SETTINGS
@given(histories(acyclic=False))
def test_with_any_dependencies_only_blocked_deployments_are_left_to_do(history):
    records, state = history
    after = run(planner.plan(state, records), records)
    again = planner.plan(state, after)
    for dp in again.deployments:
        if dp.changes:
            assert dp.failure is None
            assert again.blocked_by(dp, after)
            assert after[dp.id].state is State.PENDING
            assert after[dp.id].error.code == "WAITING_FOR_DEPENDENCY"
        if dp.failure is not None:
            assert dp.failure.code == "DEPENDENCY_CYCLE"
            assert after[dp.id].state is State.FAILED


@SETTINGS
@given(histories(), st.data())
def test_a_deployment_missing_from_the_desired_set_is_removed(history, data):
    records, state = history
    if not records:
        return
    gone = data.draw(st.sampled_from(sorted(records)))
    kept = desired.DesiredState(tuple(d for d in state.deployments if d.id != gone))
    p = planner.plan(kept, records)
    dp = plans.find(p, gone)
    assert dp is not None and dp.removal and not dp.held
    assert [(s.component, s.action) for s in dp.steps] == [
        (c.name, Action.REMOVE)
        for c in reversed(records[gone].components)
        if c.state is not State.REMOVED and not (c.state is State.PENDING and c.digest is None)
    ]
    assert gone not in run(p, records)


@SETTINGS
@given(st.data())
def test_changing_one_parameter_plans_exactly_that_component(data):
    documents = data.draw(deployment_sets().filter(bool))
    records = run(planner.plan(parse(documents), {}), {})
    target_doc = data.draw(st.sampled_from(documents))
    components = [c["name"] for c in target_doc["spec"]["deploymentProfile"]["components"]]
    name = data.draw(st.sampled_from(components))
    target_doc["spec"]["parameters"]["changed"] = env_param("new", "CHANGED", name)
    p = planner.plan(parse(documents), records)
    dep_id = target_doc["metadata"]["annotations"]["id"]
    assert [(s.deployment_id, s.component, s.action) for s in p.changes] == [
        (dep_id, name, Action.UPDATE)
    ]


@SETTINGS
@given(histories(acyclic=False))
def test_records_round_trip_through_json(history):
    records, state = history
    for record in run(planner.plan(state, records), records).values():
        assert DeploymentRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
