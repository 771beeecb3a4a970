"""Tell systemd how the agent is doing: the sd_notify datagram protocol, standard library only.

Under a `Type=notify` unit systemd passes `$NOTIFY_SOCKET` (a path, or `@name` for an
abstract socket) and, with `WatchdogSec=`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. Each
message is one datagram of `KEY=value` lines. Outside systemd every method is a no-op, so
the agent calls them unconditionally. A failed send is logged, never raised: a broken
notification socket must not stop the agent (if pings stop, systemd restarts it anyway).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

from margo_lite import logs

log = logs.get(__name__)

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str) -> str | None:
    """The socket address of `$NOTIFY_SOCKET`, or None when it is not a unix socket we can use."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's "vsock:CID:PORT", which gateways do not use


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """`$WATCHDOG_USEC` when it is meant for this process (`$WATCHDOG_PID` absent or ours)."""
    usec, owner = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec)


class Notifier:
    """Sends state changes to systemd. Thread-safe; every method returns whether it was sent."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read systemd's variables; with the process environment, also remove them from it.

        Removing them (as `sd_notify(unset_environment=1)` does) keeps child processes such
        as `podman run` from talking to systemd in the agent's name.
        """
        source: Mapping[str, str] = os.environ if environ is None else environ
        address = _address(source.get("NOTIFY_SOCKET", ""))
        usec = _watchdog_usec(source, os.getpid()) if address else None
        if environ is None:
            _unset(os.environ)
        if source.get("NOTIFY_SOCKET") and address is None:
            log.warning(
                "ignoring NOTIFY_SOCKET %r: not a unix socket path", source["NOTIFY_SOCKET"]
            )
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a systemd to notify."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` pings (half of `WatchdogSec=`); None: no watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str = "") -> bool:
        """Startup (or a reload) is complete: configuration loaded, state recovered."""
        return self.notify("READY=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        """The main loop is alive. Sent only when systemd asked for a watchdog."""
        if self._watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload started; `ready()` ends it. MONOTONIC_USEC lets systemd order the two."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown started, so systemd shows 'deactivating' instead of a sudden exit."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status`."""
        return self.notify(_status(text))

    def notify(self, *fields: str) -> bool:
        """Send `fields` (`KEY=value`, no newlines) as one datagram."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failed:  # once: a dead socket would otherwise log every ping
                    log.warning("cannot notify systemd: %s", exc)
                self._failed = True
                return False
            self._failed = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start a new field


def _unset(environ: MutableMapping[str, str]) -> None:
    for key in _ENV_KEYS:
        environ.pop(key, None)
