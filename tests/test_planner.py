from __future__ import annotations

import json

import pytest

from margo_lite import desired, planner
from margo_lite.errors import StateCorruptError
from margo_lite.planner import Action, ComponentRecord, DeploymentRecord, Reason, State
from margo_lite.records import StatusEvent, status_event
from tests.support import plans
from tests.test_desired_docs import doc, env_param, files_of

Records = dict[str, DeploymentRecord]


def parse(*documents: dict) -> desired.DesiredState:
    state = desired.parse_files(files_of(*documents))
    assert state.failures == (), state.failures
    return state


def run(
    p: planner.Plan,
    records: Records,
    *,
    fail: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    events: list[StatusEvent] | None = None,
) -> Records:
    """Carry a plan out the way the agent does, every step succeeding unless listed in `fail`."""
    records = dict(records)

    def save(dep_id: str, record: DeploymentRecord | None) -> None:
        event = status_event(records.get(dep_id), record)
        if event is not None and events is not None:
            events.append(event)
        if record is not None:
            records[dep_id] = record

    for dp in p.deployments:
        blockers = p.blocked_by(dp, records)
        record = planner.planned_record(dp, records.get(dp.id), blockers=blockers)
        save(dp.id, record)
        if dp.failure or blockers or dp.held:
            continue
        for step in dp.changes:
            assert record is not None
            record = planner.started(record, step)
            save(dp.id, record)
            if (dp.id, step.component) in fail:
                record = planner.failed(record, step, Reason("ENGINE_FAILED", "boom"))
                save(dp.id, record)
                break
            record = planner.succeeded(record, step, {"project": f"{dp.id}-{step.component}"})
            save(dp.id, record)
        if record is not None and record.state is State.REMOVED:
            del records[dp.id]
    return records


def actions(p: planner.Plan) -> list[tuple[str, str, str]]:
    return [(s.deployment_id, s.component, s.action.value) for s in plans.steps(p)]


def test_install_then_nothing_to_do():
    state = parse(doc("a", ("db", "web")))
    p = planner.plan(state, {})
    assert actions(p) == [("a", "db", "install"), ("a", "web", "install")]
    records = run(p, {})
    assert records["a"].state is State.INSTALLED
    assert [c.data["project"] for c in records["a"].components] == ["a-db", "a-web"]
    again = planner.plan(state, records)
    assert {s.action for s in plans.steps(again)} == {Action.KEEP}
    assert again.changes == ()


def test_update_only_the_changed_component_and_remove_dropped_ones_first_in_reverse():
    records = run(planner.plan(parse(doc("a", ("db", "cache", "queue", "web"))), {}), {})
    changed = doc("a", ("db", "web"), params={"p": env_param("1", "X", "web")})
    p = planner.plan(parse(changed), records)
    assert actions(p) == [
        ("a", "queue", "remove"),
        ("a", "cache", "remove"),
        ("a", "db", "keep"),
        ("a", "web", "update"),
    ]
    events: list[StatusEvent] = []
    records = run(p, records, events=events)
    assert [c.name for c in records["a"].components] == ["db", "web"]
    assert records["a"].state is State.INSTALLED
    assert [e.state for e in events] == [State.INSTALLING] * (len(events) - 1) + [State.INSTALLED]
    assert len(events) == 7  # planned, then each of 3 steps starting and ending


def test_removed_deployment_is_removed_in_reverse_order_and_reports_removing_then_removed():
    records = run(planner.plan(parse(doc("a", ("db", "web")), doc("b")), {}), {})
    p = planner.plan(parse(doc("b")), records)
    assert actions(p) == [("a", "web", "remove"), ("a", "db", "remove"), ("b", "web", "keep")]
    assert plans.find(p, "a").removal
    events: list[StatusEvent] = []
    records = run(p, records, events=events)
    assert "a" not in records
    assert [(e.state, tuple(s for _, s in e.components)) for e in events] == [
        (State.REMOVING, (State.INSTALLED, State.INSTALLED)),
        (State.REMOVING, (State.INSTALLED, State.REMOVING)),
        (State.REMOVING, (State.INSTALLED, State.REMOVED)),
        (State.REMOVING, (State.REMOVING, State.REMOVED)),
        (State.REMOVED, (State.REMOVED, State.REMOVED)),
    ]


def test_removals_wait_while_a_document_is_unreadable():
    records = run(planner.plan(parse(doc("a"), doc("b")), {}), {})
    state = desired.parse_files({**files_of(doc("b")), "apps/a.yaml": b"metadata: [broken\n"})
    assert not state.complete
    p = planner.plan(state, records)
    dp = plans.find(p, "a")
    assert dp.held and dp.steps == ()
    assert planner.planned_record(dp, records["a"]) == records["a"]
    assert run(p, records) == records


def test_failed_document_fails_its_deployment_and_leaves_it_running():
    records = run(planner.plan(parse(doc("a")), {}), {})
    bad = doc("a")
    bad["metadata"]["annotations"]["applicationId"] = "Bad_Id"
    state = desired.parse_files(files_of(bad))
    p = planner.plan(state, records)
    (dp,) = p.deployments
    assert dp.steps == ()
    assert dp.failure.code == "INVALID_APPLICATION_ID"
    assert "apps/a.yaml document 1: metadata.annotations.applicationId" in dp.failure.message
    after = run(p, records)
    assert after["a"].state is State.FAILED
    assert after["a"].error == dp.failure
    assert after["a"].components == records["a"].components  # still Installed and running
    # the fix, unchanged in content, needs no action and reports Installed again
    fixed = planner.plan(parse(doc("a")), after)
    assert fixed.changes == ()
    events: list[StatusEvent] = []
    assert run(fixed, after, events=events)["a"].state is State.INSTALLED
    assert [e.state for e in events] == [State.INSTALLED]


def test_failed_document_of_a_new_deployment_is_recorded_failed():
    bad = doc("new")
    bad["spec"]["deploymentProfile"]["components"][0]["name"] = "bad name"
    p = planner.plan(desired.parse_files(files_of(bad)), {})
    record = planner.planned_record(p.deployments[0], None)
    assert (record.id, record.state, record.error.code) == ("new", State.FAILED, "INVALID_FIELD")


def test_dependency_order_and_waiting():
    state = parse(doc("app", depends_on="db"), doc("db"))
    p = planner.plan(state, {})
    assert [dp.id for dp in p.deployments] == ["db", "app"]
    app = plans.find(p, "app")
    assert p.blocked_by(app, {}) == ("db",)
    record = planner.planned_record(app, None, blockers=p.blocked_by(app, {}))
    assert record.state is State.PENDING
    assert record.error.code == "WAITING_FOR_DEPENDENCY"
    assert record.error.message == "waits for deployment db to be Installed"
    # carried out in order, the dependency is Installed by the time the dependent starts
    records = run(p, {})
    assert {r.state for r in records.values()} == {State.INSTALLED}


def test_dependent_stays_pending_when_its_dependency_fails():
    state = parse(doc("app", depends_on="db"), doc("db"))
    events: list[StatusEvent] = []
    records = run(planner.plan(state, {}), {}, fail={("db", "web")}, events=events)
    assert records["db"].state is State.FAILED
    assert records["db"].error == Reason("ENGINE_FAILED", "web: boom")
    assert records["app"].state is State.PENDING
    assert records["app"].error.code == "WAITING_FOR_DEPENDENCY"
    # next round: the failed spec is retried (flagged), the dependent still waits for it
    p = planner.plan(state, records)
    (step,) = plans.find(p, "db").changes
    assert step.action is Action.INSTALL and step.retry
    assert p.blocked_by(plans.find(p, "app"), records) == ("db",)


def test_dependency_not_in_the_desired_state():
    p = planner.plan(parse(doc("app", depends_on="ghost")), {})
    assert p.blocked_by(plans.find(p, "app"), {}) == ("ghost",)
    records = run(p, {})
    assert records["app"].state is State.PENDING
    assert "ghost" in records["app"].error.message


def test_installed_deployment_does_not_wait_when_nothing_changes():
    records = run(planner.plan(parse(doc("app")), {}), {})
    p = planner.plan(parse(doc("app", depends_on="ghost")), records)
    assert plans.find(p, "app").changes == ()
    assert run(p, records)["app"].state is State.INSTALLED


@pytest.mark.parametrize(
    ("edges", "in_cycle", "message"),
    [
        ({"a": "a"}, {"a"}, "a"),
        ({"a": "b", "b": "a"}, {"a", "b"}, "a, b"),
        ({"a": "b", "b": "c", "c": "a", "d": "a"}, {"a", "b", "c"}, "a, b, c"),
        # a -> b -> a, and c on a second loop through b only reached by a finished node
        ({"a": "b", "b": "a,c", "c": "b"}, {"a", "b", "c"}, "a, b, c"),
    ],
)
def test_dependency_cycle_is_a_coded_failure(edges, in_cycle, message):
    ids = sorted(set(edges) | {"free"})
    state = parse(*(doc(i, depends_on=edges.get(i)) for i in ids))
    p = planner.plan(state, {})
    for dp in p.deployments:
        if dp.id in in_cycle:
            assert dp.failure.code == "DEPENDENCY_CYCLE"
            assert dp.failure.message == f"deployments wait for each other: {message}"
            assert dp.steps == ()
        else:
            assert dp.failure is None
    records = run(p, {})
    assert records["free"].state is State.INSTALLED
    if "d" in records:
        assert records["d"].error.code == "WAITING_FOR_DEPENDENCY"


def test_removals_go_dependents_first():
    state = parse(doc("base"), doc("mid", depends_on="base"), doc("top", depends_on="mid"))
    records = run(planner.plan(state, {}), {})
    p = planner.plan(desired.DesiredState(), records)
    assert [dp.id for dp in p.deployments] == ["top", "mid", "base"]
    assert run(p, records) == {}


def test_failed_update_keeps_the_old_digest_and_is_retried():
    records = run(planner.plan(parse(doc("a")), {}), {})
    old = records["a"].components[0].digest
    state = parse(doc("a", params={"p": env_param(2, "N", "web")}))
    p = planner.plan(state, records)
    (step,) = p.changes
    assert step.action is Action.UPDATE and not step.retry
    records = run(p, records, fail={("a", "web")})
    comp = records["a"].components[0]
    assert (comp.state, comp.digest, comp.target) == (State.FAILED, old, step.desired.digest)
    (again,) = planner.plan(state, records).changes
    assert again.action is Action.UPDATE and again.retry


def test_failed_install_without_restore_installs_again():
    state = parse(doc("a"))
    (step,) = planner.plan(state, {}).changes
    record = planner.planned_record(planner.plan(state, {}).deployments[0], None)
    record = planner.failed(planner.started(record, step), step, Reason("X", "y"), restored=False)
    (again,) = planner.plan(state, {"a": record}).changes
    assert again.action is Action.INSTALL


def test_a_removed_record_desired_again_is_installed():
    records = {"a": DeploymentRecord("a", State.REMOVED, (ComponentRecord("web", State.REMOVED),))}
    p = planner.plan(parse(doc("a")), records)
    assert actions(p) == [("a", "web", "install")]
    record = planner.planned_record(p.deployments[0], records["a"])
    assert record.state is State.PENDING
    assert record.components[0].error.code == "NOT_STARTED"


def test_a_removed_record_not_desired_has_nothing_left_to_do():
    records = {"a": DeploymentRecord("a", State.REMOVED, (ComponentRecord("web", State.REMOVED),))}
    p = planner.plan(desired.DesiredState(), records)
    assert p.changes == () and plans.find(p, "a").removal
    assert run(p, records) == {}


# --- rollup and events ---------------------------------------------------------------------

P, ING, D, F = State.PENDING, State.INSTALLING, State.INSTALLED, State.FAILED


@pytest.mark.parametrize(
    ("states", "removal", "overall"),
    [
        ((P,), False, P),
        ((P, P), False, P),
        ((ING, P), False, ING),
        ((D, P), False, ING),  # started: the deployment is installing until all are through
        ((D, ING), False, ING),
        ((D, D), False, D),
        ((D, F, P), False, F),
        ((ING, F), False, F),
        ((D, State.REMOVING), False, ING),  # a dropped component going away
        ((State.REMOVING, D), True, State.REMOVING),
        ((State.REMOVED, State.REMOVED), True, State.REMOVED),
        ((State.REMOVED, F), True, F),
        ((), True, State.REMOVED),
    ],
)
def test_rollup(states, removal, overall):
    components = [
        ComponentRecord(
            f"c{i}",
            s,
            digest="d",
            target="d",
            error=Reason("E", "bad") if s is F else Reason("NOT_STARTED", "n") if s is P else None,
        )
        for i, s in enumerate(states)
    ]
    state, reason = planner.rollup(components, removal=removal)
    assert state is overall
    if overall is F:
        assert reason == Reason("E", f"c{states.index(F)}: bad")
    elif overall is P:
        assert reason.code == "NOT_STARTED"
    else:
        assert reason is None


def test_status_events_only_on_real_changes():
    a = DeploymentRecord("a", D, (ComponentRecord("web", D, digest="1", target="1"),))
    assert status_event(None, a) == StatusEvent("a", D, None, (("web", D),))
    assert status_event(a, a) is None
    # digests, targets, backend data and timestamps are not news for the WOS
    quiet = DeploymentRecord(
        "a",
        D,
        (ComponentRecord("web", D, digest="2", target="2", data={"p": "x"}),),
        digest="z",
        last_change="2026-01-01T00:00:00Z",
    )
    assert status_event(a, quiet) is None
    failed = DeploymentRecord("a", F, a.components, error=Reason("E", "m"))
    assert status_event(a, failed).error == Reason("E", "m")
    other_error = DeploymentRecord("a", F, a.components, error=Reason("E2", "m"))
    assert status_event(failed, other_error) is not None
    assert status_event(a, None) is None
    installing = DeploymentRecord("a", D, (ComponentRecord("web", ING),))
    assert status_event(a, installing) is not None
    assert StatusEvent.of(failed) == StatusEvent("a", F, Reason("E", "m"), (("web", D),))


def test_keep_steps_change_nothing():
    records = run(planner.plan(parse(doc("a")), {}), {})
    (step,) = plans.steps(planner.plan(parse(doc("a")), records))
    r = records["a"]
    assert planner.started(r, step) is r
    assert planner.succeeded(r, step) is r
    assert planner.failed(r, step, Reason("X", "y")) is r


# --- records on disk -----------------------------------------------------------------------


def test_record_json_round_trip():
    state = parse(doc("a", ("db", "web"), depends_on="z"))
    records = run(planner.plan(state, {}), {}, fail={("a", "web")})
    record = records["a"]
    assert record.depends_on == ("z",)
    text = json.dumps(record.to_json())
    assert DeploymentRecord.from_json(json.loads(text)) == record
    data = record.to_json()
    assert data["id"] == "a" and data["state"] == "Pending"
    assert [c["name"] for c in data["components"]] == ["db", "web"]


def test_record_json_round_trip_through_the_state_store(tmp_path):
    from margo_lite.statestore import StateStore

    records = run(planner.plan(parse(doc("a"), doc("b")), {}), {}, fail={("b", "web")})
    store = StateStore(tmp_path)
    for dep_id, record in records.items():
        store.write_json(f"deployments/{dep_id}.json", record.to_json())
    back = {
        name.split("/")[1].removesuffix(".json"): DeploymentRecord.from_json(store.read_json(name))
        for name in store.names("deployments")
    }
    assert back == records
    assert planner.plan(parse(doc("a"), doc("b")), back) == planner.plan(
        parse(doc("a"), doc("b")), records
    )


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"id": "a", "state": "Sleeping", "components": []},
        {"id": 1, "state": "Installed", "components": []},
        {"id": "a", "state": "Installed"},
        {"id": "a", "state": "Installed", "components": [{"name": "w"}]},
        {"id": "a", "state": "Installed", "components": ["w"]},
        {"id": "a", "state": "Installed", "components": [], "error": "x"},
        {"id": "a", "state": "Installed", "components": [], "depends_on": "b"},
        {
            "id": "a",
            "state": "Installed",
            "components": [{"name": "w", "state": "Installed", "data": {"k": 1}}],
        },
    ],
)
def test_corrupt_records_are_errors_never_empty(value):
    with pytest.raises(StateCorruptError):
        DeploymentRecord.from_json(value)


def test_a_component_is_through_installing_only_at_the_spec_it_is_meant_to_run():
    stale = ComponentRecord("web", D, digest="old", target="new")
    leaving = ComponentRecord("old", D, digest="x", target=None)
    fresh = ComponentRecord("db", D, digest="d", target="d")
    assert planner.rollup([fresh, stale])[0] is State.INSTALLING
    assert planner.rollup([fresh, leaving])[0] is State.INSTALLING
    assert planner.rollup([fresh])[0] is State.INSTALLED


def test_removal_skips_components_that_never_started():
    records = run(planner.plan(parse(doc("a", ("db", "web"))), {}), {}, fail={("a", "db")})
    assert [c.state for c in records["a"].components] == [State.FAILED, State.PENDING]
    p = planner.plan(desired.DesiredState(), records)
    assert actions(p) == [("a", "db", "remove")]
    record = planner.planned_record(p.deployments[0], records["a"])
    assert [c.state for c in record.components] == [State.FAILED, State.REMOVED]
    assert run(p, records) == {}


def test_a_dropped_component_that_never_started_just_leaves_the_record():
    records = run(planner.plan(parse(doc("a", ("db", "web"))), {}), {}, fail={("a", "db")})
    p = planner.plan(parse(doc("a", ("db",))), records)
    assert actions(p) == [("a", "db", "install")]
    record = planner.planned_record(p.deployments[0], records["a"])
    assert [c.name for c in record.components] == ["db"]
