"""The torture's desired state: deployments churned through installs, parameter updates,
package updates (a compose file change) and removals, every choice from a seeded `Random`."""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

from tests.support.engines import IMAGE
from tests.support.rig import APP, deployment

#: The compose file of every deployment's own package; `v{version}` in the served page shows
#: which package version runs, the greeting shows which parameters it got.
PACKAGE = APP.format(image=IMAGE).replace('\\"$$GREETING\\"', '\\"$$GREETING vVERSION\\"')


@dataclass
class Deployment:
    """What the test wants for one deployment; `present` False means removed (or never)."""

    id: str
    port: int
    greeting: str = "g0"
    version: int = 0
    present: bool = False
    ever: bool = False  # ever committed as present: the WOS must have heard of it

    def files(self) -> dict[str, str | None]:
        package = f"apps/{self.id}"
        doc = deployment(self.id, greeting=self.greeting, port=self.port, package=package)
        return {
            f"{package}/compose.yaml": PACKAGE.replace("VERSION", str(self.version)),
            f"{self.id}.yaml": doc if self.present else None,
        }

    def page(self) -> str:
        return f"{self.greeting} v{self.version}"


class Churn:
    """The desired state and the commits that change it: installs, parameter updates,
    package updates (a compose file change) and removals, chosen by the seeded `rng`."""

    def __init__(self, rng: Random, ports: list[int], prefix: str) -> None:
        self.rng = rng
        self.deployments = [Deployment(f"{prefix}-{chr(97 + i)}", p) for i, p in enumerate(ports)]
        self.changes = 0

    def first(self) -> tuple[str, dict[str, str | None]]:
        """Every deployment but the last installed, so the churn starts with work to keep."""
        files: dict[str, str | None] = {}
        for dep in self.deployments[:-1]:
            dep.present = dep.ever = True
            files.update(dep.files())
        files.update(self.deployments[-1].files())
        return "install " + ", ".join(d.id for d in self.deployments[:-1]), files

    def change(self) -> tuple[str, dict[str, str | None]]:
        """One random change of one or two deployments, with a description for the log."""
        self.changes += 1
        picks = self.rng.sample(self.deployments, 2 if self.rng.random() < 0.25 else 1)
        what, files = [], {}
        for dep in picks:
            if not dep.present:
                dep.present = dep.ever = True
                what.append(f"install {dep.id}")
            else:
                kind = self.rng.choices(["parameter", "package", "remove"], [4, 3, 2])[0]
                if kind == "parameter":
                    dep.greeting = f"g{self.changes}"
                elif kind == "package":
                    dep.version = self.changes
                else:
                    dep.present = False
                what.append(f"{kind} {'update ' if kind != 'remove' else ''}{dep.id}")
            files.update(dep.files())
        return ", ".join(what), files
