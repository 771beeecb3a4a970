"""The no-change reconcile and tick with 100 deployments recorded Installed, their containers
in a private podman store.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import yaml

from bench import plan as planbench
from bench.figures import Counts, Figure, fig
from bench.processes import DEVICE, volatile_dir, write_config
from margo_lite import backends, config, desired, gitsource, planner, valueclass
from margo_lite.agent import Agent, Parts
from margo_lite.backends import builtin, project
from margo_lite.devkit import wossim
from margo_lite.records import DEPLOYMENTS, load
from margo_lite.statestore import StateStore
from tests.support import engines
from tests.support.gitserver import GitServer, Upstream


def fleet_containers(
    env: dict[str, str], records: list[planner.DeploymentRecord], device: str
) -> int:
    """One created container per recorded component, named and labelled as the built-in
    driver names and labels them, so the engine's store holds what the records say runs
    (created, not started: 300 idle containers would cost the machine, not the figure)."""
    for record in records:
        for component in record.components:
            name = project.project_name(record.id, component.name, device=device)
            labels = {
                **project.ownership_labels(record.id, component.name, device=device),
                project.SERVICE: "app",
            }
            argv = ["podman", "create", "--name", builtin.container_name(name, "app")]
            for key, value in labels.items():
                argv += ["--label", f"{key}={value}"]
            engines.run([*argv, engines.IMAGE, "sleep", "3600"], env)
    return managed_count(env)


def managed_count(env: dict[str, str]) -> int:
    out = engines.run(
        ["podman", "ps", "-a", "-q", "--filter", "label=io.margo.managed-by=margo-lite"], env
    )
    return len(out.split())


class TimedSource:
    """The agent's Git source, counting the CPU its polls take in this thread."""

    def __init__(self, source: gitsource.GitSource) -> None:
        self._source = source
        self.cpu = 0.0

    def poll(self) -> gitsource.PollResult:
        started = time.thread_time()
        try:
            return self._source.poll()
        finally:
            self.cpu += time.thread_time() - started

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)


def reconcile_figures(tmp: Path, counts: Counts, env: dict[str, str]) -> list[Figure]:
    """`Agent.reconcile()` with N Installed records and nothing changed (real parts), against
    an engine store holding their containers."""
    n = counts.deployments
    files = {f"apps/{i:04}.yaml": yaml.safe_dump(planbench.document(i)).encode() for i in range(n)}
    (tmp / "srv").mkdir()
    Upstream(tmp / "srv" / "fleet.git").commit({k: v.decode() for k, v in files.items()})
    # The records as if every component had been installed (bench/plan.py's converge).
    store = StateStore(tmp / "state")
    for record in planbench.converge(desired.parse_files(files)).values():
        assert record.state is planner.State.INSTALLED
        store.write_json(f"{DEPLOYMENTS}/{record.id}.json", record.to_json())
    stored = fleet_containers(env, list(load(store).values()), DEVICE)
    run = volatile_dir("margo-bench-run-")
    try:
        with wossim.WosSimulator() as sim, GitServer(tmp / "srv") as server:
            cfg = config.load_config(
                write_config(
                    tmp / "config.yaml", tmp / "state", run, sim.url, server.url("fleet.git")
                )
            )
            built = Parts.build(cfg)
            source = TimedSource(built.source)
            parts = valueclass.replace(
                built,
                source=source,  # type: ignore[arg-type]
                backend_factory=lambda: backends.select(
                    cfg.runtime, cfg.state_dir, env, device=cfg.device.id
                ),
            )
            agent = Agent(cfg, parts=parts)
            agent.start()
            try:
                assert agent.observe(force=True) is None and agent.desired is not None
                assert len(agent.records) == n
                if planner.plan(agent.desired, agent.records).changes:
                    raise RuntimeError("the records do not match the desired state")
                agent.reconcile()  # the first one after a start sweeps leftovers (podman ps)
                queued = len(parts.outbox)
                times = []
                for _ in range(counts.reconciles):
                    agent.ctx.idle_plan = None  # plan anyway: what a change elsewhere costs
                    cpu = time.process_time()
                    agent.reconcile()
                    times.append((time.process_time() - cpu) * 1000)
                assert len(parts.outbox) == queued, "a no-change reconcile queued a report"
                ticks, whole = [], []
                for _ in range(counts.reconciles):  # the daemon's tick: poll due, nothing new
                    agent.ctx.timers.next_heal = time.monotonic() + 3600  # heal not due
                    source.cpu = 0.0
                    cpu = time.thread_time()
                    agent.tick(poll_now=True)
                    spent = time.thread_time() - cpu
                    whole.append(spent * 1000)
                    ticks.append((spent - source.cpu) * 1000)
                assert len(parts.outbox) == queued, "a no-change tick queued a report"
                assert all(r.state is planner.State.INSTALLED for r in agent.records.values())
                left = managed_count(env)  # the first reconcile's sweep removed none of them
            finally:
                agent.stop()
    finally:
        shutil.rmtree(run, ignore_errors=True)
    components = sum(len(r.components) for r in agent.records.values())
    return [
        fig(
            "reconcile_cpu_ms",
            f"no-change reconcile() that plans, {n} deployments",
            statistics.median(times),
            "ms CPU",
            f"{components} components Installed, {stored} containers in the engine's store "
            f"({left} after); median of {len(times)} "
            f"(max {max(times):.2f} ms), time.process_time",
        ),
        fig(
            "tick_cpu_ms",
            f"no-change tick, {n} deployments: CPU besides the poll",
            statistics.median(ticks),
            "ms CPU",
            f"Agent.tick with a poll due that finds nothing new, heal not due; median of "
            f"{len(ticks)}; with the poll {statistics.median(whole):.2f} ms, time.thread_time",
        ),
    ]


# --- commit to Installed on podman ---------------------------------------------------------
