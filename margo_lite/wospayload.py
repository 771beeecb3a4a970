"""The Device API's documents as data: a deployment status report, its exact bytes.

Pure: `status_body` builds the DeploymentStatus document of the contract field for field
(states in the configured spelling, the error message masked for secrets and bounded),
`encode_body` the bytes that are sent and signed. Nothing here opens a connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from margo_lite import logs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATES = ("Pending", "Installing", "Installed", "Failed", "Removing", "Removed")
CASES = ("capitalized", "lowercase")
MAX_MESSAGE = 1000  # longest error message in a status report


def spell(state: str, case: str) -> str:
    """A state in the configured spelling (contract §4, decision on spelling)."""
    if state not in STATES:
        raise ValueError(f"unknown deployment state {state!r} (one of {', '.join(STATES)})")
    if case not in CASES:
        raise ValueError(f"unknown status case {case!r}")
    return state.lower() if case == "lowercase" else state


def status_body(
    deployment_id: str,
    state: str,
    error: tuple[str, str] | None,
    components: Sequence[tuple[str, str]],
    case: str,
) -> dict:
    """The DeploymentStatus document of contract §4, field for field.

    `error` is (code, message): required for Failed, and for Pending (its reason). The
    message is masked for registered secrets and cut to a bounded length.
    """
    if state in ("Failed", "Pending") and (error is None or not error[0]):
        raise ValueError(f"a {state} report needs an error code and message")
    code, message = error if error is not None else ("", "")
    message = logs.redact(message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "deployment.margo/v1",
        "kind": "DeploymentStatus",
        "deploymentId": deployment_id,
        "status": {"state": spell(state, case), "error": {"code": code, "message": message}},
        "components": [{"name": name, "state": spell(s, case)} for name, s in components],
    }


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for a JSON body."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
