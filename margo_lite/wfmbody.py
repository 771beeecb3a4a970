"""The bodies margo-lite sends to a Margo 1.0 WFM, and the problem answers it reads back.

Pure functions. The outbox keeps each status event in the draft's shape (what the agent
queues, whatever the profile); the v1 client renders the 1.0 `DeploymentStatusManifest`
from it when it sends, with the manifest version the report is about. Capabilities follow
`DeviceCapabilitiesManifest`: architectures as amd64/arm64/arm, memory and storage as
binary-unit strings, peripheral and interface types from the 1.0 enums (anything else is
left out: the WFM would refuse the whole body for one unknown type).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from margo_lite import logs
from margo_lite.valueclass import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATES = ("pending", "installing", "installed", "failed", "removing", "removed")
MAX_MESSAGE = 1000
MAX_PROBLEM_TEXT = 300
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
ARCHITECTURES |= {"arm": "arm", "armv7l": "arm", "armv6l": "arm", "armhf": "arm"}
PERIPHERALS = ("gpu", "display", "camera", "microphone", "speaker")
INTERFACES = ("ethernet", "wifi", "cellular", "bluetooth", "usb", "canbus", "rs232")
_MI = 1 << 20


# --- status ------------------------------------------------------------------------------------


def status_v1(
    deployment_id: str,
    adopted_manifest_version: int,
    state: str,
    error: tuple[str, str] | None,
    components: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    *,
    device_id: str | None = None,
) -> dict[str, Any]:
    """A `DeploymentStatusManifest`. `error` is (code, message): the deployment's, with
    `source: deployment`; a failed component carries it too, with its own name as `source`
    (margo-lite keeps one reason per deployment, the failing component's)."""
    if isinstance(adopted_manifest_version, bool) or not isinstance(adopted_manifest_version, int):
        raise ValueError("adoptedManifestVersion must be an integer")
    if not 1 <= adopted_manifest_version < 1 << 64:
        raise ValueError("adoptedManifestVersion must be in [1, 2^64-1]")
    state = state.lower()
    if state not in STATES:
        raise ValueError(f"unknown deployment state {state!r}")
    body: dict[str, Any] = {"deploymentId": deployment_id}
    if device_id:
        body["deviceId"] = device_id
    body["adoptedManifestVersion"] = adopted_manifest_version
    status: dict[str, Any] = {"state": state}
    reason = None
    if error is not None and error[0]:
        reason = {"code": error[0], "message": _bounded(logs.redact(error[1]))}
        status["error"] = {"code": reason["code"], "source": "deployment", **reason}
    body["status"] = status
    rendered = []
    for name, component_state in components:
        lower = component_state.lower()
        if lower not in STATES:
            raise ValueError(f"unknown component state {component_state!r}")
        item: dict[str, Any] = {"name": name, "state": lower}
        if lower == "failed" and reason is not None:
            item["error"] = {"code": reason["code"], "source": name, "message": reason["message"]}
        rendered.append(item)
    body["components"] = rendered
    return body


def status_from_event(body: Mapping[str, Any]) -> tuple[str, tuple[str, str] | None, list]:
    """(state, error, components) of a queued draft-shape report (`wos.status_body`)."""
    status = body.get("status") if isinstance(body.get("status"), Mapping) else {}
    state = status.get("state")
    if not isinstance(state, str):
        raise ValueError("queued report without a state")
    error = status.get("error") if isinstance(status.get("error"), Mapping) else {}
    code, message = error.get("code") or "", error.get("message") or ""
    components = []
    for item in body.get("components") or []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            components.append((item["name"], str(item.get("state", ""))))
    return state, ((str(code), str(message)) if code else None), components


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


# --- capabilities ------------------------------------------------------------------------------


def binary_size(size_bytes: int) -> str:
    """`16Gi` when whole gibibytes, else whole mebibytes (`7812Mi`), never rounded up."""
    mebibytes = max(0, int(size_bytes)) // _MI
    return f"{mebibytes // 1024}Gi" if mebibytes and mebibytes % 1024 == 0 else f"{mebibytes}Mi"


def capabilities_v1(
    device_id: str,
    identity: Mapping[str, str],
    cpu: Mapping[str, Any],
    memory_bytes: int | None,
    storage_bytes: int | None,
    peripherals: list[Mapping[str, Any]],
    interfaces: list[Mapping[str, Any]],
    labels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A `DeviceCapabilitiesManifest` from what `capabilities` discovered and configured."""
    cpu_entry: dict[str, Any] = {"cores": int(cpu.get("cores") or 1)}
    arch = ARCHITECTURES.get(str(cpu.get("cpuArchitecture", "")))
    if arch:
        cpu_entry["architecture"] = arch
    props: dict[str, Any] = {
        "id": device_id,
        "vendor": identity.get("vendor", ""),
        "modelNumber": identity.get("modelNumber", ""),
        "serialNumber": identity.get("serialNumber", ""),
        "cpus": [cpu_entry],
    }
    if memory_bytes is not None:
        props["memory"] = binary_size(memory_bytes)
    if storage_bytes is not None:
        props["storage"] = binary_size(storage_bytes)
    props["peripherals"] = [p for p in map(_peripheral, peripherals) if p is not None]
    props["interfaces"] = [{"type": i["type"]} for i in interfaces if i.get("type") in INTERFACES]
    props["otelCollector"] = False  # margo-lite runs no OpenTelemetry collector
    props["supportedRuntimes"] = ["oci"]
    props["supportedDeploymentTypes"] = ["compose"]
    body: dict[str, Any] = {"properties": props}
    if labels:
        body["labels"] = dict(labels)
    return body


def _peripheral(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = entry.get("type")
    if kind not in PERIPHERALS:
        return None
    found: dict[str, Any] = {"type": kind}
    nested = entry.get("properties") if isinstance(entry.get("properties"), Mapping) else {}
    manufacturer = entry.get("manufacturer") or nested.get("manufacturer")
    model = entry.get("model") or entry.get("modelNumber")
    if isinstance(manufacturer, str) and manufacturer:
        found["manufacturer"] = manufacturer
    if isinstance(model, str) and model:
        found["model"] = model
    return found


# --- RFC 9457 problem answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    type: str = "about:blank"
    title: str = ""
    detail: str = ""
    retryable: bool | None = None
    retry_after: float | None = None  # retryAfterSeconds (advisory; the header wins)

    def describe(self) -> str:
        parts = [p for p in (self.title, self.detail) if p]
        return f"{self.type}: " + ": ".join(parts) if parts else self.type


def parse_problem(body: bytes, content_type: str | None) -> Problem | None:
    """The problem of an `application/problem+json` answer (or a JSON body that looks like
    one), every text masked and cut; None when it is not one."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    declared = "problem+json" in (content_type or "").lower()
    if not isinstance(doc, dict) or not (declared or ("type" in doc and "title" in doc)):
        return None
    retry_after = doc.get("retryAfterSeconds")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        retry_after = None
    retryable = doc.get("retryable")
    return Problem(
        type=_text(doc.get("type")) or "about:blank",
        title=_text(doc.get("title")),
        detail=_text(doc.get("detail")),
        retryable=retryable if isinstance(retryable, bool) else None,
        retry_after=float(retry_after) if retry_after is not None else None,
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    cleaned = "".join(c if c.isprintable() else " " for c in value[:MAX_PROBLEM_TEXT])
    return logs.redact(cleaned).strip()
