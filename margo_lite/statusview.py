"""What `margo-lite status` shows: read from the state store, never from the network.

The reader is tolerant of what it does not know yet (a fresh state dir holds nothing),
but a corrupt record is reported as such rather than shown as missing.
"""

from __future__ import annotations

from margo_lite.config import Config
from margo_lite.outbox import FOLDER as OUTBOX
from margo_lite.records import AGENT_RECORD, AGENT_REVISION_KEY, DEPLOYMENTS, POLL_RECORD
from margo_lite.statestore import StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def collect(cfg: Config) -> dict[str, Any]:
    store = StateStore(cfg.state_dir)
    agent = store.read_json(AGENT_RECORD) or {}
    agent.update(StateStore(cfg.device.runtime_dir).read_json(POLL_RECORD) or {})
    deployments = []
    for name in store.names(DEPLOYMENTS):
        record = store.read_json(name)
        if isinstance(record, dict):
            deployments.append(_shown(record))
    return {
        "device": cfg.device.id,
        "state_dir": str(cfg.state_dir),
        "agent": {
            "commit": agent.get(AGENT_REVISION_KEY),
            "last_poll": agent.get("last_poll"),
            "last_poll_result": agent.get("last_poll_result"),
            "next_poll": agent.get("next_poll"),
            "outbox": len(store.names(OUTBOX)),
        },
        "deployments": sorted(deployments, key=lambda d: str(d.get("id", ""))),
    }


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """What a user asks of a deployment record; digests and backend facts stay inside."""
    return {
        "id": record.get("id"),
        "state": record.get("state"),
        "error": record.get("error"),
        "last_change": record.get("last_change"),
        "components": [
            {"name": c.get("name"), "state": c.get("state"), "error": c.get("error")}
            for c in record.get("components", [])
            if isinstance(c, dict)
        ],
    }


def format_table(report: dict[str, Any]) -> str:
    agent = report["agent"]
    lines = [
        f"device      {report['device']}",
        f"commit      {agent['commit'] or '-'}",
        f"last poll   {agent['last_poll'] or '-'}  {agent['last_poll_result'] or ''}".rstrip(),
        f"next poll   {agent['next_poll'] or '-'}",
        f"outbox      {agent['outbox']} report(s) waiting",
        "",
    ]
    deployments = report["deployments"]
    if not deployments:
        lines.append("no deployments")
        return "\n".join(lines)
    header = ("DEPLOYMENT", "STATE", "COMPONENTS", "LAST CHANGE", "LAST ERROR")
    rows = [header]
    for d in deployments:
        components = ", ".join(f"{c.get('name')}={c.get('state')}" for c in d.get("components", []))
        error = d.get("error") or {}
        rows.append(
            (
                str(d.get("id", "?")),
                str(d.get("state", "?")),
                components or "-",
                str(d.get("last_change") or "-"),
                f"{error.get('code')}: {error.get('message')}" if error.get("code") else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)
