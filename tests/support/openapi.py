"""Request bodies checked against the Margo 1.0 OpenAPI (rc.3) schemas, as test data holds it.

`jsonschema` is a test-only dependency (tools/setup-host installs it in both environments).
A body is validated against the request schema of its operation, with every `$ref` into
`#/components/schemas` resolved inside the same document (the schema below carries the
OpenAPI document's `components`, so plain JSON pointers resolve in jsonschema 4.10 and 4.2x
alike, without a resolver or registry).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = (
    Path(__file__).resolve().parent.parent / "data/margo-v1/workload-management-api-1.0.0-rc.3.yaml"
)


@functools.cache
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def request_schema(path: str, method: str) -> dict[str, Any]:
    """The JSON request body schema of `method path` (paths as the spec writes them)."""
    operation = spec()["paths"][path][method.lower()]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "components": spec()["components"],
    }


def errors(body: Any, path: str, method: str) -> list[str]:
    """Every way `body` breaks the operation's request schema (empty: valid)."""
    validator = jsonschema.Draft202012Validator(request_schema(path, method))
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
        for e in validator.iter_errors(body)
    )


STATUS = ("/api/v1/deployments/{deploymentId}/status", "post")
CAPABILITIES = ("/api/v1/capabilities/{deviceId}", "put")
