"""Reading a plan in tests: one deployment's plan by id, and every step in order."""

from __future__ import annotations

from margo_lite import planner


def find(p: planner.Plan, deployment_id: str) -> planner.DeploymentPlan | None:
    return next((dp for dp in p.deployments if dp.id == deployment_id), None)


def steps(p: planner.Plan) -> tuple[planner.Step, ...]:
    """Every step of every deployment, keeps included, in the order of the plan."""
    return tuple(s for dp in p.deployments for s in dp.steps)
