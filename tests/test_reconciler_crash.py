"""Report before record, at every crash point: the process dies just before or just after
each write the agent makes while it installs, updates or removes a deployment, and at the
backend's before/after-apply and before/after-remove points. At the crash, the disk must
hold the rules of docs/architecture.md ("Crash ordering"):

- every state a deployment record holds has been told to the WOS (delivered, or queued in
  the outbox), as the newest report or the one before it (queued, its record not yet
  written): the WOS may hear a state twice, never miss one a record holds;
- nothing is told Installed that does not run, nor Removed that still runs.

Then a fresh agent on the same disk, engine and repository (the restart) must reach the
desired state, tell the WOS the state it records, and leave the outbox empty.

The real-process versions (SIGKILL at the `MARGO_LITE_TEST_KILL_AT` points, real engines)
are tests/test_agent_e2e.py and tests/test_torture.py; these run every point in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from margo_lite.errors import EngineError
from tests.support.twindevice import Device, app, settings
from tests.support.twins import CRASH_AFTER, Crash, Write

# --- scenarios: what runs before, what changes (and may crash), what must result -------------


def _install(device: Device) -> dict[str, str]:
    device.source.commit(app("web-1"))
    return {"web-1": "hello"}


def _update(device: Device) -> dict[str, str]:
    device.source.commit(app("web-1", greeting="hello"))
    _converge(device)
    device.source.commit(app("web-1", greeting="bonjour"))
    return {"web-1": "bonjour"}


def _remove(device: Device) -> dict[str, str]:
    device.source.commit({**app("web-1"), **app("web-2")})
    _converge(device)
    device.source.commit(app("web-2"))
    return {"web-2": "hello"}


SCENARIOS: dict[str, Callable[[Device], dict[str, str]]] = {
    "install": _install,
    "update": _update,
    "remove": _remove,
}


def _converge(device: Device) -> None:
    assert device.started().once().converged


def _told(device: Device, deployment_id: str) -> list[dict]:
    """Every report body for the deployment: delivered, then queued."""
    delivered = [b for d, b in device.sender.delivered if d == deployment_id]
    return delivered + [b for d, b in device.queued() if d == deployment_id]


def _as_told(body: dict) -> tuple:
    status = body["status"]
    components = tuple((c["name"], c["state"]) for c in body["components"])
    return status["state"], status["error"]["code"], components


def _as_recorded(record: dict) -> tuple:
    components = tuple((c["name"], c["state"]) for c in record["components"])
    return record["state"], (record["error"] or {}).get("code", ""), components


def _check_disk_at_crash(device: Device, where: str) -> None:
    ids = (
        {
            n.removeprefix("deployments/").removesuffix(".json")
            for n in device.store.names("deployments")
        }
        | {d for d, _ in device.sender.delivered}
        | {d for d, _ in device.queued()}
    )
    for deployment_id in sorted(ids):
        told = _told(device, deployment_id)
        record = device.record(deployment_id)
        if record is not None:
            assert told, f"{where}: {deployment_id} is recorded but the WOS was told nothing"
            # The newest report may be one step ahead: queued, its record not yet written.
            recent = [_as_told(body) for body in told[-2:]]
            assert _as_recorded(record) in recent, (
                f"{where}: {deployment_id} is recorded {_as_recorded(record)} "
                f"but the WOS was last told {recent}"
            )
        if not told:
            continue
        running = (deployment_id, "web") in device.backend.running
        last = told[-1]["status"]["state"]
        if last == "Installed":
            assert running, f"{where}: {deployment_id} told Installed but does not run"
        if last == "Removed":
            assert not running, f"{where}: {deployment_id} told Removed but still runs"


def _check_after_restart(device: Device, wanted: dict[str, str], where: str) -> None:
    assert sorted(device.backend.running) == sorted((d, "web") for d in wanted), where
    for deployment_id, greeting in wanted.items():
        assert device.env(deployment_id)["GREETING"] == greeting, where
        record = device.record(deployment_id)
        assert record is not None and record["state"] == "Installed", where
        last = [b for d, b in device.sender.delivered if d == deployment_id][-1]
        assert _as_told(last) == _as_recorded(record), where
    for deployment_id in {d for d, _ in device.sender.delivered} - set(wanted):
        assert device.record(deployment_id) is None, where
        assert device.sender.last(deployment_id)["state"] == "Removed", where
    assert device.queued() == [], where
    assert device.store.names("deployments") == sorted(f"deployments/{d}.json" for d in wanted)


def _nth(n: int) -> Callable[[Write], bool]:
    seen = [0]

    def match(entry: Write) -> bool:
        seen[0] += 1
        return seen[0] == n + 1

    return match


def _writes_in(tmp_path: Path, scenario: str, *, wos_up: bool) -> int:
    """How many writes and deletes the change makes when nothing crashes."""
    device = Device(settings(tmp_path / "count"))
    SCENARIOS[scenario](device)
    device.sender.down = not wos_up
    before = len(device.store.journal)
    agent = device.agent()
    agent.start()
    agent.once()
    return len(device.store.journal) - before


@pytest.mark.parametrize("wos_up", [True, False], ids=["wos-up", "wos-down"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_crash_before_or_after_any_write_loses_no_state(tmp_path, scenario, wos_up):
    count = _writes_in(tmp_path, scenario, wos_up=wos_up)
    assert count >= 4  # records and reports at least: the scenario did change something
    for n in range(count):
        for after in (False, True):
            where = f"{scenario}: crash {'after' if after else 'before'} write {n + 1}/{count}"
            device = Device(settings(tmp_path / f"{n}-{after}"))
            wanted = SCENARIOS[scenario](device)
            device.sender.down = not wos_up
            device.store.crash_on(_nth(n), after=after)
            agent = device.agent()
            agent.start()
            with pytest.raises(Crash):
                agent.once()
            _check_disk_at_crash(device, where)

            device.sender.down = False
            restarted = device.agent()
            restarted.start()
            assert restarted.once().converged, where
            _check_after_restart(device, wanted, where)


BACKEND_POINTS = {
    "before-apply": ("install", "apply", "web-1", Crash("killed before apply")),
    "after-apply": ("install", "apply", "web-1", CRASH_AFTER),
    "before-update": ("update", "apply", "web-1", Crash("killed before apply")),
    "after-update": ("update", "apply", "web-1", CRASH_AFTER),
    "before-remove": ("remove", "remove", "web-1", Crash("killed before remove")),
    "after-remove": ("remove", "remove", "web-1", CRASH_AFTER),
}


@pytest.mark.parametrize("point", sorted(BACKEND_POINTS))
def test_a_crash_around_the_engine_call_is_redone_at_the_restart(tmp_path, point):
    scenario, method, deployment_id, outcome = BACKEND_POINTS[point]
    device = Device(settings(tmp_path))
    wanted = SCENARIOS[scenario](device)
    device.backend.script(method, deployment_id, outcome)
    agent = device.agent()
    agent.start()
    with pytest.raises(Crash):
        agent.once()
    _check_disk_at_crash(device, point)
    told = device.sender.last(deployment_id)["state"]
    assert told == ("Installing" if method == "apply" else "Removing")  # delivered before

    restarted = device.agent()
    restarted.start()
    assert restarted.once().converged
    _check_after_restart(device, wanted, point)
    assert device.sender.last(deployment_id)["state"] == (
        "Installed" if method == "apply" else "Removed"
    )
    # the engine was asked again: an apply or remove is redone, never assumed done
    assert len(device.backend.calls_of(method, deployment_id)) >= 2


def test_a_crash_during_a_rollback_keeps_the_old_version_recorded(tmp_path):
    """The update fails and is rolled back; the process dies before it records that: the
    restart tries the update again and reaches the new version."""
    device = Device(settings(tmp_path))
    wanted = _update(device)
    device.backend.script(
        "apply", "web-1", EngineError("failed; previous restored", code="ROLLED_BACK")
    )
    device.store.crash_on(
        lambda w: w.name == "deployments/web-1.json" and w.value["state"] == "Failed"
    )
    agent = device.agent()
    agent.start()
    with pytest.raises(Crash):
        agent.once()
    _check_disk_at_crash(device, "rollback")
    assert device.env("web-1")["GREETING"] == "hello"

    restarted = device.agent()
    restarted.start()
    assert restarted.once().converged
    _check_after_restart(device, wanted, "rollback")


def test_every_record_write_follows_its_report(tmp_path):
    """The journal of a whole install, update and removal: each time a deployment record
    is written in a new state, that state was queued in the outbox before it."""
    device = Device(settings(tmp_path))
    device.source.commit({**app("web-1"), **app("web-2")})
    _converge(device)
    device.source.commit({**app("web-1", greeting="bonjour")})
    _converge(device)

    queued: dict[str, tuple] = {}
    recorded: dict[str, tuple] = {}
    checked = 0
    for entry in device.store.journal:
        if entry.op != "write":
            continue
        if entry.name.startswith("outbox/"):
            queued[entry.value["deployment_id"]] = _as_told(entry.value["body"])
        elif entry.name.startswith("deployments/"):
            state = _as_recorded(entry.value)
            if recorded.get(entry.value["id"]) != state:
                assert queued.get(entry.value["id"]) == state, entry
                checked += 1
            recorded[entry.value["id"]] = state
    assert checked >= 7  # web-1 and web-2 installed, web-1 updated, web-2 removed
