"""Errors of the container engines and compose drivers that run the components."""

from __future__ import annotations

from .base import MargoLiteError, StalledError, TransientError

# --- container engines and compose drivers --------------------------------------------------


class EngineError(MargoLiteError):
    """Area base (no family): an engine or compose command failed. Keeps argv, return code
    and the stderr tail."""

    code = "ENGINE_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        argv: tuple[str, ...] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class EngineFailedError(EngineError, TransientError):
    """A step on the engine failed; it may pass on a later try. A rollback whose cause is
    stalled (`ComposeError`) waits for a change like its cause."""

    code = "ENGINE_FAILED"
    codes = {
        "ENGINE_FAILED": "read the engine's message in the log",
        "PORT_IN_USE": "free the port, or publish another one",
        "NAME_CONFLICT": "remove the container that holds the name",
        "IMAGE_MISSING": "make the image reachable (registry, network, `runtime.*` auth) or "
        "load it on the device",
        "HEALTHCHECK_FAILED": "fix the application so it starts and turns healthy",
        "ROLLED_BACK": "the previous version runs again; see the cause in the message",
    }


class EngineTransientError(EngineFailedError):
    code = "ENGINE_UNAVAILABLE"
    codes = {"ENGINE_UNAVAILABLE": "start the engine (podman socket, dockerd)"}


class ComposeError(EngineError, StalledError):
    """The compose project itself is wrong (unreadable file, bad interpolation, a key the
    built-in driver does not support): a package problem, not retried until it changes."""

    code = "COMPOSE_INVALID"
    codes = {
        "COMPOSE_INVALID": "fix the compose file or the parameters the message names",
        "COMPOSE_UNSUPPORTED_KEY": "drop the key, or use an external compose tool "
        "(`runtime.compose`)",
        "IMAGE_INVALID": "fix the image reference",
        "UNSUPPORTED_POINTER": "use a pointer form margo-lite supports",
    }
