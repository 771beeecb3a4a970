"""What the agent's steps share: the parts they drive, the clocks, timers and test hooks.

`agent.Agent` builds one `Context` and hands it to each step (`poll`, `act`, `heal`,
`report`); the steps keep no state of their own. `Parts` are the pieces built from the
configuration (the state stores, the desired-state source, the package store, the outbox,
the WOS client, the backend), each replaceable by a twin in tests. The clocks are injected
(`clock` monotonic, `wall` for polling hours and report stamps, `rand` for jitter) so the
timers run on a test's clock. The error boundary's coding of surprises (`coded`,
`internal_error`) is here because every step uses it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable

from margo_lite import config, logs, pools, proxy, schedule
from margo_lite.constants import PACKAGE_CACHE
from margo_lite.errors import InternalError, LocalIOError, MargoLiteError
from margo_lite.outbox import Outbox
from margo_lite.records import RecordBook
from margo_lite.source import Snapshot
from margo_lite.statestore import StateStore
from margo_lite.valueclass import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported where first used: an idle agent never loads most of them
    from typing import Any

    from margo_lite import backends, desired, mtls
    from margo_lite.packages import PackageStore
    from margo_lite.source import DesiredSource

log = logs.get(__name__)


@dataclass
class Parts:
    """What the agent drives; built from the configuration, replaceable in tests."""

    store: StateStore
    runtime: StateStore
    source: DesiredSource
    packages_factory: Callable[[], PackageStore]
    outbox: Outbox
    client: Any  # wos.WosClient, or wfmclient.WfmClient with wos.api v1
    backend_factory: Callable[[], backends.Backend]
    _packages: PackageStore | None = field(default=None, init=False, repr=False)

    @property
    def packages(self) -> PackageStore:
        """Built at first use: only a step that installs, heals or prunes needs it."""
        if self._packages is None:
            self._packages = self.packages_factory()
        return self._packages

    @packages.setter
    def packages(self, store: PackageStore) -> None:
        self._packages = store

    @classmethod
    def build(cls, cfg: config.Config) -> Parts:
        state_dir = cfg.state_dir
        store = StateStore(state_dir)
        proxies = pools.settings_from(cfg.network, os.environ, source=cfg.source)
        log.info("network: %s", proxies.describe())
        # v1: one set of mTLS pools (the WFM's SPIFFE identity checked) for the desired
        # state and the reports alike, its connections reused by both.
        wfm = None
        if v1(cfg):
            from margo_lite import wfmclient

            wfm = wfmclient.make_pools(cfg.wos, proxies, source=cfg.source)
        client = report_client(cfg, proxies, wfm)

        def packages() -> PackageStore:
            from margo_lite.packages import PackageStore

            return PackageStore(cfg.packages, state_dir / PACKAGE_CACHE, proxies=proxies)

        def backend() -> backends.Backend:
            from margo_lite import backends

            return backends.select(cfg.runtime, state_dir, os.environ, device=cfg.device.id)

        return cls(
            store=store,
            runtime=StateStore(cfg.device.runtime_dir),
            source=desired_source(cfg, proxies, wfm),
            packages_factory=packages,
            outbox=Outbox(store, cfg.wos.outbox_limit),
            client=client,
            backend_factory=backend,
        )


def v1(cfg: config.Config) -> bool:
    return cfg.wos.api == "v1"


def report_client(
    cfg: config.Config, proxies: proxy.Settings, wfm: mtls.WfmPools | None = None
) -> Any:
    """The report client of the configured profile (`wos.api`): the draft's `WosClient`, or
    in v1 the `WfmClient`, which may share `wfm` with the desired-state source (one identity,
    connections reused by both). A draft device never imports the v1 modules."""
    if v1(cfg):
        from margo_lite import wfmclient

        return wfmclient.WfmClient(
            cfg.wos, cfg.device.id, cfg.state_dir, proxies=proxies, pools=wfm, source=cfg.source
        )
    from margo_lite import wos

    return wos.WosClient(cfg.wos, cfg.device.id, cfg.state_dir, proxies=proxies)


def desired_source(
    cfg: config.Config, proxies: proxy.Settings, wfm: mtls.WfmPools | None = None
) -> DesiredSource:
    """The source `desired.source` names: the Git repository, or the WFM (`wos.api: v1`,
    over `wfm`, the v1 pools; made here when not given)."""
    if cfg.desired.source == "wos":
        from margo_lite import wfmclient
        from margo_lite.wfmsource import WfmSource

        pool = wfm or wfmclient.make_pools(cfg.wos, proxies, source=cfg.source)
        return WfmSource(cfg.wos.url, cfg.state_dir, pool)
    assert cfg.git is not None  # the configuration requires it with desired.source: git
    from margo_lite.gitsource import GitSource

    return GitSource(cfg.git, cfg.state_dir, proxies=proxies)


@dataclass
class Timers:
    """When each step is due next, on the monotonic clock, and the backoffs behind that."""

    next_poll: float = 0.0
    next_heal: float = 0.0  # every runtime.observe_interval
    next_retry: float | None = None  # the earliest retry of a failed component
    poll_backoff: schedule.Backoff = field(default_factory=schedule.Backoff)
    retry_backoff: dict[tuple[str, str], schedule.Backoff] = field(default_factory=dict)
    retry_due: dict[tuple[str, str], float] = field(default_factory=dict)
    capabilities_due: float | None = None  # capabilities not sent yet: try again then
    capabilities_backoff: schedule.Backoff = field(default_factory=schedule.Backoff)

    def retry_at(self, due: float) -> None:
        """Wake the loop for a component retry at `due` (or earlier, if one is sooner)."""
        self.next_retry = due if self.next_retry is None else min(self.next_retry, due)


def retry_backoff(cap: float) -> schedule.Backoff:
    """Retries of a failed component: 10 s after the first failure, doubling, capped."""
    return schedule.Backoff(5.0, max(5.0, cap))


@dataclass(frozen=True)
class Hooks:
    """The test hooks (`agent.KILL_AT_ENV`, `agent.RAISE_AT_ENV`); None in production."""

    kill_at: str | None = None
    raise_at: str | None = None

    def checkpoint(self, name: str) -> None:
        """Crash tests: SIGKILL this process at a named point."""
        if self.kill_at == name:
            log.warning("test hook: killing the agent at %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def raise_if_asked(self, point: str, deployment_id: str) -> None:
        """Robustness tests: an unexpected exception at a named point of one deployment."""
        if self.raise_at == f"{point}:{deployment_id}":
            raise RuntimeError(f"test hook: raised at {point} of {deployment_id}")


def _noop() -> None:
    pass


@dataclass
class Context:
    """One agent's shared state: configuration, parts, records, what is desired, timers."""

    cfg: config.Config
    parts: Parts
    book: RecordBook
    clock: Callable[[], float]
    wall: Callable[[], dt.datetime]
    rand: Callable[[], float]
    heartbeat: Callable[[], None] = _noop
    long_step: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    should_stop: Callable[[], bool] = lambda: False
    hooks: Hooks = field(default_factory=Hooks)
    timers: Timers = field(default_factory=Timers)
    snapshot: Snapshot | None = None  # the revision loaded; its files
    desired: desired.DesiredState | None = None  # what its documents ask for
    applied_revision: str | None = None  # the revision applied in full (`AGENT_RECORD`)
    refused: tuple[str, str] | None = None  # a revision refused as stalled, and why
    tidy_needed: bool = True  # sweep orphans and prune the cache at the next reconcile
    #: (desired, records generation) of the last plan that had nothing to do: until either
    #: moves, a reconcile has nothing to do either (`act.reconcile` skips planning)
    idle_plan: tuple[object, int] | None = None
    #: the held revision, applied, left unread while the idle mark holds (`idlemark`)
    deferred: str | None = None
    deferred_generation: int = 0  # the records' generation when it was deferred
    idle_mark: dict[str, Any] | None = None  # the idle mark as on disk
    _backend: backends.Backend | None = field(default=None, init=False, repr=False)

    @property
    def backend(self) -> backends.Backend:
        """Built at first use: a device with nothing to run never asks for an engine."""
        if self._backend is None:
            self._backend = self.parts.backend_factory()
        return self._backend

    def in_downtime(self) -> bool:
        return schedule.in_any(self.cfg.poll.downtime, self.wall())


def coded(exc: Exception) -> MargoLiteError:
    """Any exception from a step as a coded error for its report: an OSError (a full or
    read-only disk) is LOCAL_IO_ERROR, anything unexpected INTERNAL_ERROR."""
    if isinstance(exc, MargoLiteError):
        return exc
    if isinstance(exc, OSError):
        return LocalIOError(f"{exc.strerror or exc}")
    return internal_error(exc)


def internal_error(exc: Exception) -> MargoLiteError:
    """An exception no code was written for, as INTERNAL_ERROR: its class and message for
    the report (secrets masked), the traceback in the log at debug level only."""
    log.debug("unexpected %s", type(exc).__name__, exc_info=exc)
    text = logs.redact(str(exc))
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return InternalError(f"unexpected error: {message[:400]}")
