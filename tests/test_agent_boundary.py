"""The per-deployment error boundary, in-process: a surprise in one deployment's prepare,
apply, self-heal or report building fails that deployment alone with INTERNAL_ERROR, and
the agent goes on installing and healing the others.

Real parts: the desired state in a bare repository written by C git, the package store,
the durable outbox and state, and the WOS simulator over HTTP on 127.0.0.1. The engine is
an in-memory twin (the real engines are in tests/test_agent_boundary_e2e.py), so that a
fault can be put at each step; the faults raise exceptions no code was written for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite import agent, config, desired, planner, valueclass
from margo_lite.devkit import wossim
from tests.support.gitserver import Upstream
from tests.support.rig import APP, deployment
from tests.support.twins import RecordingBackend as TwinBackend

GOOD, BAD = "good-1", "bad-1"


class FaultyPackages:
    """The real package store, with a surprise while preparing one package location."""

    def __init__(self, store, location: str) -> None:
        self._store, self._location = store, location

    def prepare(self, package_location, key_location, repo_files):
        if package_location == self._location:
            raise ValueError("a value this code never expected")
        return self._store.prepare(package_location, key_location, repo_files)

    def __getattr__(self, name):
        return getattr(self._store, name)


class FaultyOutbox:
    """The real outbox; queueing the Installed report of `deployment_id` raises, as building
    a report from a value of a type nobody expected would. (It is queued after the step, so
    this surprise reaches the per-deployment boundary, not the step's.)"""

    def __init__(self, outbox, deployment_id: str) -> None:
        self._outbox, self._id = outbox, deployment_id

    def add(self, deployment_id: str, body: dict, **kw) -> None:
        if deployment_id == self._id and body["status"]["state"] == "Installed":
            raise TypeError("Object of type date is not JSON serializable")
        self._outbox.add(deployment_id, body, **kw)

    def __getattr__(self, name):
        return getattr(self._outbox, name)

    def __len__(self) -> int:
        return len(self._outbox)


@pytest.fixture
def sim() -> Iterator[wossim.WosSimulator]:
    with wossim.WosSimulator() as simulator:
        yield simulator


def _device(
    tmp_path: Path,
    sim: wossim.WosSimulator,
    *,
    bad_files: dict[str, str] | None = None,
    overrides: dict[str, dict] | None = None,
    **hooks,
) -> tuple[agent.Agent, TwinBackend]:
    """An agent on the twin engine with two deployments, GOOD and BAD (or `bad_files`)."""
    upstream = Upstream(tmp_path / "repo.git")
    if bad_files is None:
        bad_files = {
            "apps/bad/compose.yaml": APP.format(image="example.com/web:1"),
            f"{BAD}.yaml": deployment(BAD, greeting="hello", port=18081, package="apps/bad"),
        }
    upstream.commit(
        {
            "apps/web/compose.yaml": APP.format(image="example.com/web:1"),
            f"{GOOD}.yaml": deployment(GOOD, greeting="hello", port=18080),
            **bad_files,
        }
    )
    data = {
        "device": {
            "id": "gw-boundary",
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
        },
        "wos": {"url": sim.url},
        "git": {"url": str(upstream.path)},
        "poll": {"interval": "1s", "jitter": 0},
    }
    for section, keys in (overrides or {}).items():
        data.setdefault(section, {}).update(keys)
    cfg = config.parse_config(data)
    twin = TwinBackend()
    parts = valueclass.replace(agent.Parts.build(cfg), backend_factory=lambda: twin)
    return agent.Agent(cfg, parts=parts, **hooks), twin


def _cycle(device: agent.Agent) -> None:
    device.observe(force=True)
    device.reconcile()
    device.heal()
    device.report(force=True)


def _last(sim: wossim.WosSimulator, deployment_id: str) -> dict:
    return sim.statuses(deployment_id)[-1]["status"]


@pytest.mark.parametrize("point", ["prepare", "apply", "heal", "report"])
def test_a_surprise_fails_that_deployment_alone(tmp_path, sim, caplog, point):
    device, twin = _device(tmp_path, sim)
    if point == "prepare":
        device.parts.packages = FaultyPackages(device.parts.packages, "apps/bad")
    elif point == "apply":
        twin.faults[("apply", BAD)] = TypeError("unhashable type: 'dict'")
    elif point == "report":
        device.parts.outbox = FaultyOutbox(device.parts.outbox, BAD)
    caplog.set_level(logging.DEBUG, logger="margo_lite")
    device.start()
    _cycle(device)
    if point == "heal":  # installed first; then observing it raises
        assert _last(sim, BAD)["state"] == "Installed"
        twin.faults[("health", BAD)] = KeyError("State")
        _cycle(device)

    bad = _last(sim, BAD)
    assert bad["state"] == "Failed"
    assert bad["error"]["code"] == "INTERNAL_ERROR"
    expected = {"prepare": "ValueError", "apply": "TypeError", "heal": "KeyError"}
    assert expected.get(point, "TypeError") in bad["error"]["message"]
    assert _last(sim, GOOD)["state"] == "Installed"
    assert (GOOD, "web") in twin.running

    # The traceback is in the log at debug level only; the error line is one line.
    # (The log filter folds a traceback into the message, masked for secrets.)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("INTERNAL_ERROR" in m for m in errors)
    assert not any("Traceback" in m for m in errors)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("Traceback" in m for m in debug)

    # The agent goes on: the good deployment is still healed when its container goes.
    del twin.running[(GOOD, "web")]
    _cycle(device)
    assert (GOOD, "web") in twin.running
    assert _last(sim, GOOD)["state"] == "Installed"
    assert _last(sim, BAD)["state"] == "Failed"


def test_the_test_hook_raises_only_where_it_is_told(tmp_path, sim):
    """MARGO_LITE_TEST_RAISE_AT, which the running-agent test uses, names one point of one
    deployment; the others are untouched."""
    device, _ = _device(tmp_path, sim, raise_at=f"apply:{BAD}")
    device.start()
    _cycle(device)
    assert _last(sim, BAD)["error"]["code"] == "INTERNAL_ERROR"
    assert "RuntimeError: test hook" in _last(sim, BAD)["error"]["message"]
    assert _last(sim, GOOD)["state"] == "Installed"


@pytest.mark.parametrize("where", ["reading", "planning"])
def test_a_surprise_with_the_whole_desired_state_keeps_what_runs(tmp_path, sim, monkeypatch, where):
    """Before deployments can be told apart (reading the commit's documents, planning),
    a surprise keeps the last desired state in force: nothing is removed or reported,
    self-heal goes on, and the next good commit is applied."""
    device, twin = _device(tmp_path, sim)
    device.start()
    _cycle(device)
    reports = len(sim.statuses())
    upstream = Upstream(tmp_path / "repo.git")
    upstream.commit({f"{GOOD}.yaml": deployment(GOOD, greeting="new", port=18080)})
    target = (desired, "parse_files") if where == "reading" else (planner, "plan")

    def surprise(*args, **kwargs):
        raise AttributeError("'int' object has no attribute 'lower'")

    with monkeypatch.context() as patch:
        patch.setattr(*target, surprise)
        error = device.observe(force=True)
        device.reconcile()
        del twin.running[(BAD, "web")]  # unchanged by the new commit: self-heal restores it
        device.heal()
        device.report(force=True)
    if where == "reading":
        assert error is not None and "INTERNAL_ERROR" in error
    assert (GOOD, "web") in twin.running and (BAD, "web") in twin.running
    assert len(sim.statuses()) == reports

    _cycle(device)  # the surprise is gone: the new commit is applied
    assert (
        twin.running[(GOOD, "web")].document["services"]["web"]["environment"]["GREETING"] == "new"
    )
    assert _last(sim, GOOD)["state"] == "Installed"
