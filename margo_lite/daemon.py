"""The long-running process around the reconciler: timing, signals, systemd, reload.

The reconciler (agent.py) knows what to do; this module knows when. It owns the only
loop of the process, sleeps on a self-pipe so signals wake it at once, pings the systemd
watchdog from that loop (so a hung step is seen and restarted), and turns signals into
requests that are served between steps: SIGTERM/SIGINT stop after the current step,
SIGUSR1 polls now, SIGHUP reloads the configuration (a bad new one is refused and the old
one stays).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from margo_lite import config, logs, sdnotify
from margo_lite.errors import ConfigError, MargoLiteError, StateCorruptError

log = logs.get(__name__)

#: Test hook (documented in DEVELOPERS.md): while this file exists the main loop blocks
#: without pinging the watchdog, as a hung step would.
HANG_FILE_ENV = "MARGO_LITE_TEST_HANG_FILE"
_MAX_SLEEP = 30.0  # wake at least this often, whatever the schedule says
_ERROR_PAUSE = 30.0  # after a cycle failed for a reason not handled inside it


@dataclass
class Requests:
    """What signals asked for, served by the loop between steps."""

    stop: bool = False
    poll_now: bool = False
    reload: bool = False


class Daemon:
    """Runs `agent_factory(cfg)` until asked to stop.

    The agent must offer `start()`, `tick(now, poll_now) -> float` (seconds until it wants
    to run again) and `stop()`; `heartbeat` is passed to it for long steps.
    """

    def __init__(
        self,
        config_path: str,
        cfg: config.Config,
        agent_factory: Callable[..., object],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self._factory = agent_factory
        # With no mapping given, the notifier also takes NOTIFY_SOCKET & co. out of
        # os.environ, so engine commands started later do not talk to systemd.
        self.notifier = sdnotify.Notifier.from_environ(environ)
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self.requests = Requests()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._last_ping = 0.0

    # --- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.requests.stop = True
        elif signum == signal.SIGUSR1:
            self.requests.poll_now = True
        elif signum == signal.SIGHUP:
            self.requests.reload = True

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # --- the loop --------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Ping the watchdog; called by the loop and by the agent between long steps."""
        self._hang_if_asked()
        now = self._clock()
        interval = self.notifier.watchdog_interval()
        if interval is not None and now - self._last_ping >= interval / 2:
            self.notifier.watchdog()
            self._last_ping = now

    def run(self) -> int:
        self._install_signals()
        agent = self._factory(self.cfg, heartbeat=self.heartbeat)
        agent.start()
        self.notifier.ready(f"watching {logs.sanitize_url(self.cfg.git.url)}")
        log.info("margo-lite started for device %s", self.cfg.device.id)
        try:
            while not self.requests.stop:
                self.heartbeat()
                if self.requests.reload:
                    self.requests.reload = False
                    agent = self._reload(agent)
                poll_now, self.requests.poll_now = self.requests.poll_now, False
                try:
                    delay = agent.tick(poll_now=poll_now)
                except StateCorruptError:
                    raise  # state that cannot be trusted: stop rather than act on it
                except MargoLiteError as exc:  # e.g. a full disk: keep what runs, try again
                    log.error("cycle failed, trying again in %.0fs: %s", _ERROR_PAUSE, exc)
                    delay = _ERROR_PAUSE
                if self.requests.stop:
                    break
                self._sleep(delay)
        finally:
            self.notifier.stopping()
            agent.stop()
            log.info("margo-lite stopped")
        return 0

    def _sleep(self, delay: float) -> None:
        interval = self.notifier.watchdog_interval()
        limit = min(_MAX_SLEEP, interval / 2) if interval else _MAX_SLEEP
        timeout = max(0.0, min(delay, limit))
        if self.requests.stop or self.requests.poll_now or self.requests.reload:
            return
        select.select([self._wake_r], [], [], timeout)  # a signal's byte wakes it at once
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _reload(self, agent: object) -> object:
        self.notifier.reloading()
        try:
            new_cfg = config.load_config(self.config_path)
            config.check_files(new_cfg)
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            self.notifier.ready()
            return agent
        if new_cfg.device.state_dir != self.cfg.device.state_dir:
            log.error("configuration not reloaded: device.state_dir cannot change while running")
            self.notifier.ready()
            return agent
        try:
            new_agent = self._factory(new_cfg, heartbeat=self.heartbeat)
            agent.stop()
            new_agent.start()
        except MargoLiteError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            self.notifier.ready()
            return agent
        self.cfg = new_cfg
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready()
        return new_agent

    def _hang_if_asked(self) -> None:
        hang_file = self._environ.get(HANG_FILE_ENV)
        if not hang_file:
            return
        deadline = time.monotonic() + 3600
        while Path(hang_file).exists() and time.monotonic() < deadline and not self.requests.stop:
            time.sleep(0.1)
