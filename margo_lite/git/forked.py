"""A step on the local repository, run in a forked child so that the agent never holds dulwich.

Fetching a commit and reading its files need dulwich and map its packs; in the long-running
process both would stay for good (about 2.5 MiB of a gateway's memory, for a step taken
only when the desired state moves). `call` forks: the child runs the step, writes its value
or its error down a pipe and exits, and its memory goes with it. A hostile pack that makes
dulwich balloon or crash takes down only the child; the agent gets a coded error.

The child shares the parent's memory as it was at the fork (configuration, open
connections, registered secrets); the parent waits for it and never touches what the child
used meanwhile. Its copy of the state folder's lock is closed at the fork (statestore): a
child that outlives a killed agent must not keep the restarted one out. The value crosses
as `marshal` data (str, bytes, dicts, tuples): both ends are this code.
"""

from __future__ import annotations

import marshal
import os
import signal
from collections.abc import Callable

from margo_lite import errors, logs
from margo_lite.errors import GitError, GitTransientError, MargoLiteError, StalledError
from margo_lite.pools import short_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

log = logs.get(__name__)


CHILD_FAILED = "GIT_CHILD_FAILED"
_VALUE, _ERROR = "value", "error"


def call(step: Callable[[], T], what: str) -> T:
    """`step()` in a forked child: its value, or its `MargoLiteError` raised again here.

    Any other end of the child (a bug, a signal, no memory left) is a `GitTransientError`
    coded `GIT_CHILD_FAILED`; `what` names the step in its message."""
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:  # out of file descriptors
        raise _cannot_start(what, exc) from None
    try:
        pid = os.fork()
    except OSError as exc:  # out of processes or memory: as a child that could not run
        os.close(read_end)
        os.close(write_end)
        raise _cannot_start(what, exc) from None
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(step, write_end)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as answer:
            data = answer.read()
    finally:
        _, status = os.waitpid(pid, 0)
    outcome = _decode(data, status)
    del data  # a snapshot may be 64 MiB: not held twice
    return _outcome(outcome, status, what)


def _child(step: Callable[[], object], fd: int) -> None:
    """Run the step; write its outcome; leave at once, without the parent's exit handlers."""
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)  # a stop ends the child, not a flag of it
        try:
            outcome = (_VALUE, step())
        except MargoLiteError as exc:
            outcome = (_ERROR, type(exc).__name__, exc.message, exc.code)
        except Exception as exc:  # a surprise of the step: coded in the parent
            log.debug("the forked step failed", exc_info=True)
            outcome = (_ERROR, "", f"{type(exc).__name__}: {short_reason(exc)}", CHILD_FAILED)
        data = marshal.dumps(outcome)
        del outcome
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        code = 0
    finally:  # no flush of stdio here: what the parent had buffered is the parent's
        os._exit(code)


def _decode(data: bytes, status: int) -> object:
    """What a child that exited 0 wrote; None for anything else."""
    try:
        return marshal.loads(data) if os.waitstatus_to_exitcode(status) == 0 else None
    except (EOFError, ValueError, TypeError):
        return None


def _outcome(outcome: object, status: int, what: str) -> T:
    """The child's value, or its error raised in the parent's terms."""
    if not isinstance(outcome, tuple) or not outcome:
        raise GitTransientError(
            f"the process that {what} ended without an answer ({_ended(status)})",
            code=CHILD_FAILED,
        )
    if outcome[0] == _VALUE:
        return outcome[1]
    _, name, message, code = outcome
    cls = getattr(errors, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, MargoLiteError)):
        raise GitTransientError(f"the process that {what} failed: {message}", code=code)
    if cls.__init__ is not MargoLiteError.__init__:  # fields of its own would be lost
        same_family = GitError if issubclass(cls, StalledError) else GitTransientError
        raise same_family(message, code=code)
    raise cls(message, code=code)


def _cannot_start(what: str, exc: OSError) -> GitTransientError:
    return GitTransientError(
        f"cannot start the process that {what}: {exc.strerror}", code=CHILD_FAILED
    )


def _ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-code}"
    return f"exit status {code}"
