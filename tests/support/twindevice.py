"""A device made of twins (tests/support/twins.py) for the in-process reconciler tests
(tests/test_reconciler*.py): the configuration, the parts wired into `Agent`s one after
another on the same disk, engine, repository and WOS, the daemon's loop on the twins'
clock, what a user reads back, and the desired-state files the tests commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from margo_lite import agent, config
from margo_lite.outbox import Outbox
from margo_lite.packages import PackageStore
from tests.support.rig import APP, deployment
from tests.support.twins import (
    Clock,
    MemoryStateStore,
    RecordingBackend,
    RecordingSender,
    ScriptedSource,
)


def settings(tmp_path: Path, **sections: Mapping[str, Any]) -> config.Config:
    """A configuration for a twin device: no jitter, a 60 s poll, a 30 s heal interval."""
    data: dict[str, dict[str, Any]] = {
        "device": {
            "id": "gw-twin",
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
        },
        "wos": {"url": "http://127.0.0.1:9"},  # never called: the sender is a twin
        "git": {"url": str(tmp_path / "unused.git")},  # never read: the source is a twin
        "poll": {"interval": "60s", "jitter": 0, "max_backoff": "15m"},
        "runtime": {"observe_interval": "30s"},
    }
    for section, keys in sections.items():
        data.setdefault(section, {}).update(keys)
    return config.parse_config(data)


@dataclass
class Device:
    """One device built from twins. `agent()` makes a fresh `Agent` on the same disk,
    engine, repository and WOS: after a `Crash`, the next one is the restarted process."""

    cfg: config.Config
    clock: Clock = field(default_factory=Clock)
    store: MemoryStateStore = field(default_factory=MemoryStateStore)
    runtime: MemoryStateStore = field(default_factory=MemoryStateStore)
    source: ScriptedSource = field(init=False)
    backend: RecordingBackend = field(init=False)
    sender: RecordingSender = field(init=False)
    rand: float = 0.5  # jitter draws: 0.5 is no spread at all

    def __post_init__(self) -> None:
        self.source = ScriptedSource(self.clock)
        self.backend = RecordingBackend(self.clock)
        self.sender = RecordingSender(self.clock)

    @property
    def packages_dir(self) -> Path:
        return Path(self.cfg.state_dir) / "packages"

    def parts(self) -> agent.Parts:
        return agent.Parts(
            store=self.store,
            runtime=self.runtime,
            source=self.source,
            packages_factory=lambda: PackageStore(self.cfg.packages, self.packages_dir),
            outbox=Outbox(
                self.store,
                self.cfg.wos.outbox_limit,
                clock=self.clock.monotonic,
                rand=lambda: self.rand,
            ),
            client=self.sender,
            backend_factory=lambda: self.backend,
        )

    def agent(self, **kwargs: Any) -> agent.Agent:
        return agent.Agent(
            self.cfg,
            parts=self.parts(),
            clock=self.clock.monotonic,
            wall=self.clock.wall,
            rand=lambda: self.rand,
            **kwargs,
        )

    def started(self, **kwargs: Any) -> agent.Agent:
        """A fresh agent, started: the process after a (re)start."""
        fresh = self.agent(**kwargs)
        fresh.start()
        return fresh

    def run(self, device: agent.Agent, seconds: float, *, max_ticks: int = 10_000) -> None:
        """The daemon's loop for `seconds` of clock time: tick, sleep what it asks."""
        end = self.clock.monotonic() + seconds
        for _ in range(max_ticks):
            delay = device.tick()
            if self.clock.monotonic() + delay > end:
                self.clock.advance(end - self.clock.monotonic())
                return
            self.clock.advance(max(delay, 0.001))
        raise AssertionError(f"more than {max_ticks} ticks in {seconds}s")

    # --- what a user checks -------------------------------------------------------------------

    def record(self, deployment_id: str) -> dict | None:
        """The deployment record on disk, as `margo-lite status` reads it."""
        return self.store.json(f"deployments/{deployment_id}.json")

    def queued(self) -> list[tuple[str, dict]]:
        """The reports in the outbox on disk, oldest first."""
        return [
            (value["deployment_id"], value["body"])
            for value in (self.store.json(n) for n in self.store.names("outbox"))
        ]

    def told(self, deployment_id: str) -> list[dict]:
        """Every report for the deployment the WOS has, then those still queued: the
        `status` of each, oldest first."""
        queued = [b["status"] for d, b in self.queued() if d == deployment_id]
        return self.sender.reports(deployment_id) + queued

    def env(self, deployment_id: str, component: str = "web") -> Mapping[str, Any]:
        """The environment of the running unit's first service."""
        unit = self.backend.running[(deployment_id, component)]
        service = next(iter(unit.document["services"].values()))
        return service.get("environment", {})


# --- desired-state files ---------------------------------------------------------------------

WEB = APP.format(image="example.com/web:1")
DB = "services:\n  db:\n    image: example.com/db:1\n"


def app(dep_id: str = "web-1", *, greeting: str = "hello", **kwargs: Any) -> dict[str, str]:
    """The files of one deployment of the web package (in the repository)."""
    return {
        "apps/web/compose.yaml": WEB,
        f"{dep_id}.yaml": deployment(dep_id, greeting=greeting, port=8080, **kwargs),
    }


def two_components(dep_id: str = "stack-1", *, greeting: str = "hello") -> dict[str, str]:
    """A deployment of two components, db before web, in listed order."""
    doc = yaml.safe_load(deployment(dep_id, greeting=greeting, port=8080))
    profile = doc["spec"]["deploymentProfile"]
    profile["components"].insert(0, {"name": "db", "properties": {"packageLocation": "apps/db"}})
    return {
        "apps/web/compose.yaml": WEB,
        "apps/db/compose.yaml": DB,
        f"{dep_id}.yaml": yaml.safe_dump(doc),
    }
