"""The order deployments go in: dependencies first, dependents removed first, cycles found.

Pure graph functions over the `depends-on` annotations, used by the planner: `cycles`
finds the deployments that wait for each other (Tarjan's strongly connected sets, without
recursion, so a hostile chain of ids cannot exhaust the stack), `install_order` puts
dependencies before their dependents (the order of the files otherwise, cycle members
last), `removal_order` removes dependents before what they depend on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from margo_lite.desired import Deployment
    from margo_lite.planner import DeploymentRecord


def cycles(deployments: Iterable[Deployment]) -> dict[str, str]:
    """Ids in a dependency cycle -> the ids of their cycle (Tarjan's strongly connected sets)."""
    graph = {d.id: list(d.depends_on) for d in deployments}
    graph = {node: [dep for dep in deps if dep in graph] for node, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: dict[str, str] = {}

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in graph:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, deps = work[-1]
            for dep in deps:
                if dep not in index:
                    visit(dep)
                    work.append((dep, iter(graph[dep])))
                    break
                if dep in on_stack:
                    low[node] = min(low[node], index[dep])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    if len(members) > 1 or node in graph[node]:
                        text = ", ".join(sorted(members))
                        found.update((m, text) for m in members)
    return found


def install_order(
    deployments: tuple[Deployment, ...], cycles: Mapping[str, str]
) -> list[Deployment]:
    """Dependencies first; otherwise the order of the files; cycle members last."""
    ids = {d.id for d in deployments}
    done: set[str] = set()
    order: list[Deployment] = []
    remaining = [d for d in deployments if d.id not in cycles]
    while remaining:
        ready = [
            d
            for d in remaining
            if all(dep in done or dep not in ids or dep in cycles for dep in d.depends_on)
        ]
        if not ready:  # only behind cycle members: they go in file order
            ready = remaining
        for d in ready:
            done.add(d.id)
            order.append(d)
        remaining = [d for d in remaining if d.id not in done]
    order.extend(d for d in deployments if d.id in cycles)
    return order


def removal_order(removed: list[str], current: Mapping[str, DeploymentRecord]) -> list[str]:
    """Dependents before what they depend on; ids sorted otherwise."""
    remaining = sorted(removed)
    order: list[str] = []
    while remaining:
        needed = {dep for i in remaining for dep in current[i].depends_on}
        ready = [i for i in remaining if i not in needed] or remaining
        order.extend(ready)
        remaining = [i for i in remaining if i not in ready]
    return order
