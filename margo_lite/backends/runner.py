"""The one way margo-lite runs an engine or compose command line, and reads its failure.

`run_tool` runs a command with the engine's environment, no stdin and a timeout; a failure
becomes an `EngineError` whose code says what went wrong (daemon unreachable, port taken,
name taken, image missing: `classify`) and keeps the tool's own message, masked
(`masked_argv`: environment values may be secrets). A missing program or no answer in time
is transient. `Engine.run` and the external compose drivers both go through it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from margo_lite import logs
from margo_lite.errors import EngineError, EngineFailedError, EngineTransientError

log = logs.get(__name__)

STDERR_TAIL = 2000

# (code, pattern in the engine's message), first match wins.
_CLASSIFY: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "ENGINE_UNAVAILABLE",
        re.compile(
            r"cannot connect to (the docker daemon|podman)|is the docker daemon running"
            r"|error during connect|connect: no such file or directory.*\.sock",
            re.I,
        ),
    ),
    (
        "PORT_IN_USE",
        re.compile(
            r"address already in use|port is already allocated|ports are not available", re.I
        ),
    ),
    (
        "NAME_CONFLICT",
        re.compile(r"name .* is already in use|is already in use by container|conflict", re.I),
    ),
    (
        "IMAGE_MISSING",
        re.compile(
            r"no such image|image not known|manifest unknown|pull access denied"
            r"|repository does not exist|unable to find image|failed to resolve image"
            r"|requested access to the resource is denied|initializing source"
            r"|short-name .* did not resolve|not found: manifest",
            re.I,
        ),
    ),
)


def classify(stderr: str) -> str:
    """The error code for an engine's message; ENGINE_FAILED when nothing more is known."""
    for code, pattern in _CLASSIFY:
        if pattern.search(stderr):
            return code
    return "ENGINE_FAILED"


def engine_error(
    what: str, argv: Sequence[str], returncode: int | None, stderr: str, code: str | None = None
) -> EngineError:
    """An EngineError (transient when the engine is unreachable) with the engine's message."""
    tail = logs.redact(stderr.strip()[-STDERR_TAIL:])
    code = code or classify(tail)
    last = tail.splitlines()[-1] if tail else f"exit status {returncode}"
    cls = EngineTransientError if code == "ENGINE_UNAVAILABLE" else EngineFailedError
    return cls(
        f"{what}: {last}", code=code, argv=masked_argv(argv), returncode=returncode, stderr=tail
    )


def reworded(cause: EngineError, message: str, code: str) -> EngineError:
    """The engine's failure told in the caller's words, keeping the command and its output."""
    cls = EngineTransientError if isinstance(cause, EngineTransientError) else EngineFailedError
    return cls(
        message, code=code, argv=cause.argv, returncode=cause.returncode, stderr=cause.stderr
    )


def masked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with environment values hidden: parameters may be secrets, and errors get logged."""
    masked = list(argv)
    for index in range(1, len(masked)):
        if masked[index - 1] in ("--env", "-e") and "=" in masked[index]:
            masked[index] = masked[index].split("=", 1)[0] + "=" + logs.MASK
    return tuple(masked)


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    environ: Mapping[str, str],
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run an engine or compose command line; a failure is a coded `EngineError`.

    A missing program or no answer in time is transient (ENGINE_UNAVAILABLE): it may be
    installed or come back; a failed command keeps the tool's own message, masked.
    """
    started = time.monotonic()
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=dict(environ),
            cwd=cwd,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise EngineTransientError(
            f"{what}: {argv[0]} is not installed", argv=masked_argv(argv)
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise EngineTransientError(
            f"{what}: no answer within {exc.timeout:.0f}s", argv=masked_argv(argv)
        ) from None
    # where an apply's time goes, at debug level (`what` names the command, no environment value)
    log.debug("%s: %.3f s, exit status %d", what, time.monotonic() - started, result.returncode)
    if result.returncode != 0:
        raise engine_error(what, argv, result.returncode, result.stderr or result.stdout)
    return result


def answers(probe: Callable[[], object], program: str, environ: Mapping[str, str]) -> bool:
    """Whether `program` is on the PATH of `environ` and `probe` (its version) succeeds."""
    if not on_path(program, environ):
        return False
    try:
        probe()
    except EngineError:
        return False
    return True


def on_path(program: str, environ: Mapping[str, str]) -> bool:
    """Whether `program` (a name, or a path) is an executable file on the PATH of `environ`,
    as `shutil.which` finds it: `runtime.engine: auto` asks at start, and shutil would load
    bz2 and lzma into the agent for this one lookup."""
    if os.path.dirname(program):
        candidates = [program]
    else:
        candidates = [os.path.join(d, program) for d in os.get_exec_path(environ) if d]
    return any(os.path.isfile(c) and os.access(c, os.X_OK) for c in candidates)
