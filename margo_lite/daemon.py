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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from margo_lite import config, logs, runmark, sdnotify
from margo_lite.errors import ConfigError, MargoLiteError, StateCorruptError
from margo_lite.valueclass import dataclass

log = logs.get(__name__)

#: Test hook (documented in DEVELOPERS.md): while this file exists the main loop blocks
#: without pinging the watchdog, as a hung step would.
HANG_FILE_ENV = "MARGO_LITE_TEST_HANG_FILE"
_MAX_SLEEP = 30.0  # wake at least this often, whatever the schedule says
_ERROR_PAUSE = 30.0
#: Longest a single bounded step may keep the watchdog fed: longer than any engine or
#: download timeout (compose commands stop at 10 minutes, health waits and rollbacks add
#: to that), short enough that a stuck step is restarted.
STEP_LIMIT = 30 * 60.0  # after a cycle failed for a reason not handled inside it


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
        self._step_since: float | None = None
        self._stopped = threading.Event()

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

    @contextlib.contextmanager
    def long_step(self) -> Iterator[None]:
        """Around one bounded step (a download, an engine command with its own timeout):
        a helper thread keeps the watchdog fed meanwhile, for at most STEP_LIMIT, so a
        slow step is not mistaken for a hung loop, while a hang elsewhere still is."""
        self._step_since = self._clock()
        try:
            yield
        finally:
            self._step_since = None
            self.heartbeat()

    def _feed_during_steps(self, interval: float) -> None:
        while not self._stopped.wait(interval / 2):
            since = self._step_since
            if since is not None and self._clock() - since < STEP_LIMIT:
                self.notifier.watchdog()

    def _agent(self, cfg: config.Config) -> object:
        return self._factory(
            cfg,
            heartbeat=self.heartbeat,
            long_step=self.long_step,
            should_stop=lambda: self.requests.stop,
        )

    def run(self) -> int:
        self._install_signals()
        agent = self._agent(self.cfg)
        # killed with its podman calls (watchdog, OOM)? Then check the ports after the first
        # cycle has put back what the kill interrupted (runmark.py, portcheck.py), and again
        # once a deployment that cycle left failed or under way moves: a retry starts its
        # containers later, on ports the killed run may have left forwarded elsewhere.
        check_ports = runmark.mark_running(self.cfg.device.runtime_dir)
        checked: int | None = None  # the records' generation at the last port check
        agent.start()
        interval = self.notifier.watchdog_interval()
        if interval:
            threading.Thread(target=self._feed_during_steps, args=(interval,), daemon=True).start()
        self.notifier.ready(f"watching {logs.sanitize_url(self.cfg.desired_url)}")
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
                if check_ports:
                    from margo_lite import portcheck  # only after an unclean stop

                    generation, settled = portcheck.progress(agent)
                    if generation != checked:  # after the first cycle, then after each
                        checked = generation  # that moved a deployment not settled before
                        with self.long_step():  # podman calls and probes: keep it fed
                            portcheck.after_unclean_stop(agent)
                        check_ports = not settled
                if self.requests.stop:
                    break
                self._sleep(delay)
        finally:
            self._stopped.set()
            self.notifier.stopping()
            agent.stop()
            runmark.mark_stopped(self.cfg.device.runtime_dir)
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
        for key in ("id", "state_dir"):
            if getattr(new_cfg.device, key) != getattr(self.cfg.device, key):
                log.error("configuration not reloaded: device.%s cannot change while running", key)
                self.notifier.ready()
                return agent
        try:
            new_agent = self._agent(new_cfg)
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
