"""The durable status outbox: every report is on disk before `add` returns.

One record per report under `outbox/` in the state store, named by a sequence number, so a
power cut or a SIGKILL loses none and a restart delivers them in the order they were made.
`flush` delivers the oldest report first, and a deployment's next report only after the one
before it went through, so the WOS sees each deployment's states in order.

Failures, by the error's type (see `wos.check`):
- transient (network, TLS, 401 after a refresh, 408, 429, 5xx): stop, back off
  exponentially with jitter up to a cap, and try again from the same report;
- rejected (any other 4xx): logged with the WOS's answer; that deployment waits and its
  report is retried, and dropped after `MAX_REJECTIONS` tries.

The outbox is bounded: past `limit` reports, intermediate reports of a deployment (those
with a newer one behind them) are merged away, oldest first; the newest report of every
deployment is always kept, even if that means going past the limit.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable

from margo_lite import logs
from margo_lite.errors import StateCorruptError, WosError, WosRejectedError
from margo_lite.schedule import Backoff
from margo_lite.statestore import StateStore
from margo_lite.valueclass import dataclass, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

log = logs.get(__name__)

FOLDER = "outbox"
_RECORD = re.compile(r"^outbox/(\d{16})\.json$")
MAX_REJECTIONS = 3  # tries of a report the WOS rejects (4xx) before it is dropped
MAX_SENDS_PER_FLUSH = 50  # bounded work per call: the agent's loop calls flush often


if TYPE_CHECKING:  # an interface for type checkers; nothing checks it at run time

    class StatusSender(Protocol):
        """`revision` is the desired-state revision a report is about, when it was queued with
        one: the Margo 1.0 body needs it (`adoptedManifestVersion`), the draft's does not."""

        def post_status(
            self, deployment_id: str, body: dict, revision: str | None = None
        ) -> None: ...


#: Waits between tries while the WOS does not take reports: 2 s doubling to 5 min, spread.
BACKOFF = Backoff(base=1.0, cap=300.0)


@dataclass
class FlushResult:
    delivered: int = 0
    dropped: int = 0
    pending: int = 0
    #: The error that stopped this flush (transient), if any.
    error: WosError | None = None
    #: `now`-clock time before which a flush does nothing (None: no wait).
    not_before: float | None = None
    skipped: bool = False


@dataclass
class _Entry:
    seq: int
    deployment_id: str
    not_before: float = 0.0  # after a rejection: this report waits, other deployments go on


class Outbox:
    """Reports waiting for the WOS, oldest first. `now` is `time.monotonic()` unless given."""

    def __init__(
        self,
        store: StateStore,
        limit: int,
        *,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.limit = limit
        self._backoff = backoff or BACKOFF
        self._initial_backoff = self._backoff
        self._rand = rand
        self._clock = clock
        self._not_before = 0.0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._load()

    # --- loading -------------------------------------------------------------------------

    def _load(self) -> None:
        for name in self.store.names(FOLDER):
            match = _RECORD.match(name)
            if not match:
                continue
            try:
                record = self.store.read_json(name)
            except StateCorruptError as exc:
                # A lost report must not stop the agent; keep the file for a human to look at.
                log.error("status report %s is unreadable and is skipped: %s", name, exc)
                self._quarantine(name)
                continue
            if not isinstance(record, dict) or not isinstance(record.get("deployment_id"), str):
                log.error("status report %s has an unknown shape and is skipped", name)
                self._quarantine(name)
                continue
            seq = int(match.group(1))
            self._entries[seq] = _Entry(seq, record["deployment_id"])
        if self._entries:
            log.info("%d status report(s) waiting from before the restart", len(self._entries))

    def _quarantine(self, name: str) -> None:
        path = self.store.path(name)
        target = self.store.path(f"outbox-unreadable/{path.name}")
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.replace(target)
        except OSError as exc:
            log.error("cannot move %s aside: %s", path, exc.strerror or exc)
        self.store.delete(name)

    # --- adding --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self) -> list[tuple[str, dict]]:
        """(deployment id, body) of every waiting report, oldest first (status, tests)."""
        return [(e.deployment_id, self._read(e)["body"]) for e in self._entries.values()]

    def add(self, deployment_id: str, body: dict, *, revision: str | None = None) -> None:
        """Queue a report; it is on disk (fsynced) when this returns. `revision` is the
        desired-state revision it is about (a v1 report's `adoptedManifestVersion`)."""
        seq = max(self._entries, default=0) + 1
        record: dict[str, Any] = {"deployment_id": deployment_id, "body": body, "rejections": 0}
        if revision is not None:
            record["revision"] = revision
        self.store.write_json(_name(seq), record)
        self._entries[seq] = _Entry(seq, deployment_id)
        self._merge_if_full()

    def _merge_if_full(self) -> int:
        """Drop the oldest intermediate reports while over the limit; returns how many."""
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return 0
        newest: dict[str, int] = {}
        for seq, entry in self._entries.items():
            newest[entry.deployment_id] = seq
        intermediate = [
            seq for seq, entry in self._entries.items() if newest[entry.deployment_id] != seq
        ]
        merged = 0
        for seq in intermediate[:excess]:
            self._remove(seq)
            merged += 1
        if merged:
            log.warning(
                "status outbox full (%d): merged %d intermediate report(s)", self.limit, merged
            )
        if len(self._entries) > self.limit:
            log.warning(
                "status outbox holds %d reports, past its limit of %d: each is the newest of "
                "its deployment and is kept",
                len(self._entries),
                self.limit,
            )
        return merged

    # --- delivering ----------------------------------------------------------------------

    def next_attempt(self) -> float | None:
        """When a flush would next send something, on the outbox's clock; None when empty.
        The agent's loop wakes for it, so held reports go out when the backoff says."""
        if not self._entries:
            return None
        heads: dict[str, float] = {}  # a deployment's oldest report holds back its later ones
        for entry in self._entries.values():
            heads.setdefault(entry.deployment_id, entry.not_before)
        return max(self._not_before, min(heads.values()))

    def flush(
        self,
        client: StatusSender,
        now: float | None = None,
        *,
        quiet: bool = False,
        max_sends: int = MAX_SENDS_PER_FLUSH,
    ) -> FlushResult:
        """Deliver what is due, at most `max_sends` reports. Cheap when nothing is due, so
        the agent may call it on every loop.

        `now` may come from any clock, as long as every call uses the same one (default:
        `time.monotonic()`). `quiet` (during a known downtime) logs failures at debug level.
        Delivery is at least once: a report sent just before a crash may arrive twice.
        """
        now = self._clock() if now is None else now
        result = FlushResult()
        if now < self._not_before:
            result.skipped = True
            result.pending = len(self._entries)
            result.not_before = self._not_before
            return result
        blocked: set[str] = set()
        sends = 0
        for entry in list(self._entries.values()):
            if sends >= max_sends:
                break
            if entry.deployment_id in blocked:
                continue
            if now < entry.not_before:
                blocked.add(entry.deployment_id)  # keep its later reports behind it
                continue
            try:
                record = self._read(entry)
            except StateCorruptError as exc:
                log.error("status report %s is unreadable and is skipped: %s", entry.seq, exc)
                self._quarantine(_name(entry.seq))
                del self._entries[entry.seq]
                continue
            sends += 1
            try:
                extra = {"revision": record["revision"]} if "revision" in record else {}
                client.post_status(entry.deployment_id, record["body"], **extra)
            except WosRejectedError as exc:
                blocked.add(entry.deployment_id)
                if self._rejected(entry, record, exc, now):
                    result.dropped += 1
                continue
            except WosError as exc:  # transient, or a local problem (signing): retry later
                self._failed(exc, now, quiet)
                result.error = exc
                break
            self._remove(entry.seq)
            result.delivered += 1
        if result.error is None:
            self._recovered()
        result.pending = len(self._entries)
        result.not_before = self._not_before if self._not_before > now else None
        if result.delivered:
            log.info("delivered %d status report(s), %d waiting", result.delivered, result.pending)
        return result

    def _failed(self, exc: WosError, now: float, quiet: bool) -> None:
        first = not self._backoff.failures
        self._backoff = self._backoff.failed()
        delay = self._backoff.spread(self._rand())
        if exc.retry_after is not None:
            delay = min(max(delay, exc.retry_after), self._backoff.cap)
        self._not_before = now + delay
        level = logging.DEBUG if quiet or not first else logging.WARNING  # once per outage
        log.log(
            level,
            "status reports not delivered (%d waiting), next try in %.0fs: %s",
            len(self._entries),
            delay,
            exc,
        )

    def _recovered(self) -> None:
        if self._backoff.failures:
            log.info("the WOS takes status reports again")
        self._backoff = self._initial_backoff
        self._not_before = 0.0

    def _rejected(self, entry: _Entry, record: dict, exc: WosError, now: float) -> bool:
        """Count a rejection; True when the report was dropped."""
        rejections = int(record.get("rejections", 0)) + 1
        if rejections >= MAX_REJECTIONS:
            log.error(
                "status report for deployment %s dropped after %d rejections: %s",
                entry.deployment_id,
                rejections,
                exc,
            )
            self._remove(entry.seq)
            return True
        log.warning(
            "status report for deployment %s rejected (try %d of %d): %s",
            entry.deployment_id,
            rejections,
            MAX_REJECTIONS,
            exc,
        )
        self.store.write_json(_name(entry.seq), {**record, "rejections": rejections})
        rejected = replace(self._initial_backoff, failures=rejections)
        entry.not_before = now + rejected.spread(self._rand())
        return False

    def _read(self, entry: _Entry) -> dict[str, Any]:
        record = self.store.read_json(_name(entry.seq))
        if not isinstance(record, dict) or "body" not in record:
            raise StateCorruptError(f"status report {_name(entry.seq)} vanished or changed")
        return record

    def _remove(self, seq: int) -> None:
        self.store.delete(_name(seq))
        del self._entries[seq]


def _name(seq: int) -> str:
    return f"{FOLDER}/{seq:016d}.json"
