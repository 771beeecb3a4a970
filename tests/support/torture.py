"""Power-cut torture: churn the desired state, SIGKILL the agent at random instants, restart
it, and check after every convergence that nothing was lost, doubled or left behind.

Shared by the short CI run (tests/test_torture.py) and the long one (bench/torture.py). The
kill is SIGKILL of the agent process; a `podman` call in flight runs on to its end, as when
the kernel's OOM killer or a crash ends the agent. `kill_group=True` kills the agent's whole
process group instead, podman calls too; on podman 4.3 with netavark that can leave a
killed container's port-forwarding (DNAT) rule in the host firewall, ahead of the new
container's, so the port forwards to a dead address while podman and the agent see the
container running: an engine hazard the agent cannot observe, and a leftover on the host.
A real power cut clears both (the firewall and the containers go with the machine).

Kills are aimed in rounds: each round aims one kill at each step of MARKERS (within 0.1 s
of its log line) and one at a uniform instant, so every window gets its share whatever the
seed; `Report.text()` is the figure CI prints.

Every random choice comes from `random.Random(seed)`; each kill is logged with its instant,
so a violation names the seed and the kill that led to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from margo_lite.backends.engine import _option, _processes
from margo_lite.backends.project import COMPONENT, DEPLOYMENT, SERVICE, project_name
from margo_lite.errors import MargoLiteError
from margo_lite.statestore import StateStore
from tests.support.churn import Churn
from tests.support.engines import http_get
from tests.support.rig import Rig

#: Log lines that open a short step. A kill aimed at one waits for its line (read from the
#: agent's log), then a random instant of up to AIMED_DELAY, so kills land in the fast steps
#: too, not only in the slow podman calls a uniform instant mostly hits.
MARKERS = {
    "fetch": ("branch main moved to",),
    "plan": ("desired state is at revision",),
    "package": (" is Pending (", " ready: sha256:"),
    "record+report": (" is Installing", " is Removing"),
    "after-engine": ("/web done",),
}
AIMED_DELAY = 0.1

#: What each kill aims at: one of the MARKERS steps, or None for a uniform instant up to
#: `max_kill_delay` after the commit. Kills go through these in rounds (shuffled by the seed),
#: so every step gets a guaranteed share of the kills, 1 in len(AIMS).
AIMS: tuple[str | None, ...] = (*sorted(MARKERS), None)
UNIFORM = "uniform instant"

#: The step a kill landed in, told by the last line the agent logged before it.
PHASES = (
    ("margo_lite.gitsource", "fetch"),
    ("margo_lite.desired", "plan"),
    ("desired state is at revision", "plan"),
    ("margo_lite.packages", "package preparation"),
    ("is Pending", "package preparation"),
    (" is Installing", "status queued + record write, before the engine"),
    (" is Removing", "status queued + record write, before the engine"),
    ("margo_lite.backends", "container creation / removal"),
    ("/web done", "record write after the engine"),
    (" is Installed", "status delivery"),
    (" is Removed", "status delivery"),
    ("margo_lite.outbox", "status delivery, or idle until the commit is seen"),
    ("margo_lite.daemon", "start-up and recovery"),
)

#: Record folders of the state directory that the check reads in full (besides the root).
RECORD_FOLDERS = ("deployments", "outbox")


@dataclass
class Report:
    seed: int
    kills: int = 0
    convergences: int = 0
    violations: list[str] = field(default_factory=list)
    kill_log: list[str] = field(default_factory=list)
    seconds: float = 0.0
    conmons: int = 0  # orphaned conmon monitors found (and ended) at the end
    phases: Counter[str] = field(default_factory=Counter)
    aimed: Counter[str] = field(default_factory=Counter)  # what each kill aimed at
    changes: int = 0  # commits of the churn after the first, each followed by a kill

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.kills} kills, {self.convergences} convergences, "
            f"{len(self.violations)} violations in {self.seconds:.0f} s "
            f"({self.conmons} orphaned conmon process(es) of killed podman calls ended after)"
        )

    def phase_table(self) -> str:
        return "\n".join(f"{n:5d}  {phase}" for phase, n in self.phases.most_common())

    def text(self) -> str:
        """The whole figure, as CI prints it."""
        aimed = ", ".join(f"{aim} {n}" for aim, n in sorted(self.aimed.items()))
        return (
            f"{self.summary()}\n"
            f"commits after the first: {self.changes}\n"
            f"kills aimed at (a step's log line + up to {AIMED_DELAY} s): {aimed}\n"
            "kills by the step they landed in (the agent's last log line):\n"
            f"{self.phase_table()}" + "".join(f"\nVIOLATION {v}" for v in self.violations)
        )


class Torture:
    """Drives one `Rig` through `kills` SIGKILLs; `run()` returns the `Report`."""

    def __init__(
        self,
        rig: Rig,
        *,
        seed: int,
        ports: list[int],
        converge_timeout: float = 90.0,
        max_kill_delay: float = 3.0,
        max_violations: int = 1,
        kill_group: bool = False,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.rig = rig
        self.rng = Random(seed)
        # Ids unique to this process: the agent ends orphaned conmons by project name, so two
        # runs on one machine (each with its own podman store) must not share project names.
        self.churn = Churn(self.rng, ports, f"torture{os.getpid()}")
        self.report = Report(seed)
        self.converge_timeout = converge_timeout
        self.max_kill_delay = max_kill_delay
        self.max_violations = max_violations
        self.kill_group = kill_group
        self.say = say
        self.agent: subprocess.Popen | None = None
        self.store = StateStore(rig.tmp / "state")
        self.projects = tuple(
            project_name(d.id, "web", device=rig.device) for d in self.churn.deployments
        )

    # --- the agent, in its own process group -----------------------------------------------

    def start(self) -> None:
        with open(self.rig.log, "ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "margo_lite", "-c", str(self.rig.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.rig.env(),
                start_new_session=True,
            )
        self.rig.agent = self.agent  # so Rig.cleanup ends it whatever happens

    def kill(self, instant: float, after: str, *, aim: str | None = None, since: int = 0) -> None:
        """SIGKILL the agent's process group `instant` seconds after `after` happened, or
        when `aim` (a MARKERS key) is given, `instant` seconds after the agent logged that
        step (past byte `since` of its log; not seen within the usual delay: killed then)."""
        assert self.agent is not None
        if aim is not None:
            seen = _wait_line(self.rig.log, since, MARKERS[aim], self.max_kill_delay + 1)
            after = f"{'its' if seen else 'waiting in vain for its'} {aim} step, {after}"
        time.sleep(instant)  # the random instant itself is what this test varies
        last = _last_line(self.rig.log)
        self.report.phases[_phase(last)] += 1
        alive = self.agent.poll() is None
        if alive and self.kill_group:
            os.killpg(self.agent.pid, signal.SIGKILL)
        elif alive:
            self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(timeout=60)
        self.report.kills += 1
        line = (
            f"kill {self.report.kills} (seed {self.report.seed}): {instant:.3f} s after {after}"
            f"{'' if alive else ' [agent had already exited]'}; last log line: {last}"
        )
        self.report.kill_log.append(line)
        self.say(line)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=60)

    # --- the run ---------------------------------------------------------------------------

    def run(self, kills: int) -> Report:
        began = time.monotonic()
        try:
            what, files = self.churn.first()
            self.rig.upstream.commit(files)
            self.start()
            self.converge(f"the first commit ({what})")
            aims = _rounds(self.rng)
            while self.report.kills < kills and len(self.report.violations) < self.max_violations:
                what, files = self.churn.change()
                self.report.changes += 1
                since = _size(self.rig.log)
                self.rig.upstream.commit(files)
                aim = next(aims)
                self.report.aimed[aim or UNIFORM] += 1
                if aim is not None:
                    instant = self.rng.uniform(0, AIMED_DELAY)
                    self.kill(instant, f"commit '{what}'", aim=aim, since=since)
                else:
                    instant = self.rng.uniform(0, self.max_kill_delay)
                    self.kill(instant, f"commit '{what}'")
                self.start()
                if self.report.kills < kills and self.rng.random() < 0.25:
                    # a second power cut while the agent recovers from the first
                    self.report.aimed["a restart (recovery)"] += 1
                    self.kill(self.rng.uniform(0, self.max_kill_delay / 2), "a restart")
                    self.start()
                self.converge(f"kill {self.report.kills}")
            self.stop()
            if not self.report.violations:
                # the end: a fresh agent that only recovers must find nothing to change
                self.start()
                self.converge("the final restart")
                self.stop()
        finally:
            self.report.seconds = time.monotonic() - began
            self.stop()
            self.report.conmons = self.reap_conmons()
        return self.report

    def converge(self, after: str) -> None:
        """Wait until every check passes; a deadline passed is a violation naming `after`."""
        deadline = time.monotonic() + self.converge_timeout
        problems = self.check()
        while problems:
            if self.agent is not None and self.agent.poll() is not None:
                problems.append(f"the agent exited with {self.agent.returncode}")
                break
            if time.monotonic() >= deadline:
                problems.append(f"not converged within {self.converge_timeout:.0f} s")
                break
            time.sleep(0.25)  # a poll interval between checks (each check runs podman)
            problems = self.check()
        if not problems:
            self.report.convergences += 1
            return
        violation = (
            f"seed {self.report.seed}, after {after} "
            f"({self.report.kill_log[-1] if self.report.kill_log else 'no kill yet'}): "
            + "; ".join(problems)
        )
        self.report.violations.append(violation)
        self.say("VIOLATION " + violation)

    # --- the checks ------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Everything that must hold once the agent converged; the list of what does not."""
        return self.check_records() + self.check_containers() + self.check_wos()

    def containers(self) -> list[dict]:
        """The labelled containers, as `Rig.containers` gives them."""
        return self.rig.containers()

    def page(self, port: int) -> str | None:
        """What the app on `port` serves, None when nothing answers."""
        return http_get(port)

    def check_records(self) -> list[str]:
        problems = []
        names = self.store.names()
        for folder in RECORD_FOLDERS:
            names += self.store.names(folder)
        records = {}
        for name in names:
            try:
                value = self.store.read_json(name)
            except MargoLiteError as exc:
                problems.append(f"state record {name} does not read: {exc.code}: {exc}")
                continue
            if name.startswith("deployments/") and value is not None:
                records[value.get("id")] = value
        for dep in self.churn.deployments:
            record = records.pop(dep.id, None)
            if dep.present and (record is None or record.get("state") != "Installed"):
                state = record and record.get("state")
                problems.append(f"{dep.id}: record is {state}, want Installed")
            elif not dep.present and record is not None:
                problems.append(f"{dep.id}: removed, yet its record is {record.get('state')}")
        problems += [f"record of unknown deployment {i}" for i in records]
        return problems

    def check_containers(self) -> list[str]:
        problems = []
        seen: dict[tuple[str, str, str], list[dict]] = {}
        for c in self.containers():
            labels = c.get("Labels") or {}
            key = (
                labels.get(DEPLOYMENT, "?"),
                labels.get(COMPONENT, "?"),
                labels.get(SERVICE, "?"),
            )
            seen.setdefault(key, []).append(c)
        for dep in self.churn.deployments:
            key = (dep.id, "web", "web")
            found = seen.pop(key, [])
            if not dep.present:
                if found:
                    problems.append(f"{dep.id}: removed, yet {len(found)} container(s) remain")
                continue
            if len(found) != 1:
                problems.append(f"{dep.id}: {len(found)} containers for service web, want 1")
            elif found[0]["State"] != "running":
                problems.append(f"{dep.id}: its container is {found[0]['State']}")
            else:
                page = (self.page(dep.port) or "").strip()
                if page != dep.page():
                    problems.append(f"{dep.id}: serves {page!r}, want {dep.page()!r}")
        for key, found in seen.items():
            problems.append(f"orphaned labelled container(s) {key}: {len(found)}")
        return problems

    def check_wos(self) -> list[str]:
        problems = []
        for dep in self.churn.deployments:
            if not dep.ever:
                continue
            last = self.rig.last(dep.id)
            state = last["status"]["state"] if last else None
            want = "Installed" if dep.present else "Removed"
            if state != want:
                problems.append(f"{dep.id}: the WOS holds {state}, want {want}")
        return problems

    # --- leftovers ------------------------------------------------------------------------

    def orphaned_conmons(self) -> list[tuple[int, list[str]]]:
        """conmon monitors of our projects' containers that podman no longer knows."""
        out = subprocess.run(
            ["podman", "ps", "-a", "-q", "--no-trunc"],
            capture_output=True,
            text=True,
            env=self.rig.environ,
            timeout=60,
        ).stdout
        known = set(out.split())
        return [
            (pid, argv)
            for pid, argv in _processes()
            if os.path.basename(argv[0]) == "conmon"
            and _option(argv, "-n").startswith(self.projects)
            and _option(argv, "-c") not in known
        ]

    def reap_conmons(self) -> int:
        """End conmon monitors of our projects that podman no longer knows (a podman call
        killed mid-way leaves them, see sandbox-notes); returns how many."""
        reaped = 0
        for pid, argv in self.orphaned_conmons():
            self.say(f"ending orphaned conmon {pid} of {_option(argv, '-n')}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                reaped += 1
        return reaped


def _rounds(rng: Random) -> Iterator[str | None]:
    """AIMS over and over, each round in its own seeded order."""
    while True:
        order = list(AIMS)
        rng.shuffle(order)
        yield from order


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_line(path: Path, since: int, needles: tuple[str, ...], timeout: float) -> bool:
    """Whether a line holding one of `needles` appears in `path` past byte `since` in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        if any(n in text for n in needles):
            return True
        time.sleep(0.005)  # polls the agent's log file; the step it waits for is milliseconds
    return False


def _phase(line: str) -> str:
    return next((phase for needle, phase in PHASES if needle in line), "other")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "-"
    return lines[-1][-160:] if lines else "-"
