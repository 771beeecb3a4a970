"""When the agent may talk to the outside world: durations, polling hours, downtime windows.

Times of day are the device's local wall-clock time, since that is what an operator means
by "22:00". Everything here is pure: callers pass `now`, nothing reads the clock.
"""

from __future__ import annotations

import datetime as dt
import re

from margo_lite.valueclass import dataclass, replace

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = r"([01]?\d|2[0-3]):([0-5]\d)"
_DAILY = re.compile(rf"^{_CLOCK}\s*-\s*{_CLOCK}$")
_WEEKLY = re.compile(rf"^([a-z]{{3}})[a-z]*\s+{_CLOCK}\s*-\s*([a-z]{{3}})[a-z]*\s+{_CLOCK}$")
_DATETIME = r"(\d{4}-\d{2}-\d{2})[t ](\d{2}:\d{2})"
_DATED = re.compile(rf"^{_DATETIME}\s*(?:-|/|\.\.)\s*{_DATETIME}$")

MINUTES_PER_DAY = 24 * 60


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "30s", "5m", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"bad duration {value!r} (use seconds, or a string like 30s, 5m, 1h)"
                )
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    return seconds


def _minutes(hour: str, minute: str) -> int:
    return int(hour) * 60 + int(minute)


@dataclass(frozen=True)
class DailyWindow:
    """From `start` to `end` minutes after midnight, every day; wraps past midnight."""

    start: int
    end: int

    def contains(self, now: dt.datetime) -> bool:
        minute = now.hour * 60 + now.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class WeeklyWindow:
    """From `start` to `end` minutes after Monday 00:00, every week; wraps past Sunday."""

    start: int
    end: int

    def contains(self, now: dt.datetime) -> bool:
        minute = now.weekday() * MINUTES_PER_DAY + now.hour * 60 + now.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class DatedWindow:
    """A one-off window between two local date-times (a planned site shutdown)."""

    start: dt.datetime
    end: dt.datetime

    def contains(self, now: dt.datetime) -> bool:
        return self.start <= now.replace(tzinfo=None) < self.end


Window = DailyWindow | WeeklyWindow | DatedWindow


def parse_daily_window(text: str) -> DailyWindow:
    """ "06:00-22:00" -> DailyWindow; "22:00-06:00" spans midnight."""
    match = _DAILY.match(text.strip())
    if not match:
        raise ValueError(f"bad time window {text!r} (expected HH:MM-HH:MM, e.g. 06:00-22:00)")
    window = DailyWindow(_minutes(*match.group(1, 2)), _minutes(*match.group(3, 4)))
    if window.start == window.end:
        raise ValueError(f"time window {text!r} is empty")
    return window


def parse_window(text: str) -> Window:
    """A downtime window: daily "01:00-03:00", weekly "Sat 22:00-Sun 04:00", or dated
    "2026-12-24T18:00-2026-12-27T06:00"."""
    if not isinstance(text, str):
        raise ValueError(f"expected a time window string, got {type(text).__name__}")
    stripped = text.strip().lower()
    if match := _WEEKLY.match(stripped):
        day1, h1, m1, day2, h2, m2 = match.groups()
        if day1 not in _DAYS or day2 not in _DAYS:
            raise ValueError(f"bad day in time window {text!r} (use Mon, Tue, ... Sun)")
        start = _DAYS.index(day1) * MINUTES_PER_DAY + _minutes(h1, m1)
        end = _DAYS.index(day2) * MINUTES_PER_DAY + _minutes(h2, m2)
        if start == end:
            raise ValueError(f"time window {text!r} is empty")
        return WeeklyWindow(start, end)
    if match := _DATED.match(stripped):
        try:
            start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}")
            end = dt.datetime.fromisoformat(f"{match.group(3)}T{match.group(4)}")
        except ValueError as exc:
            raise ValueError(f"bad date in time window {text!r}: {exc}") from None
        if end <= start:
            raise ValueError(f"time window {text!r} ends before it starts")
        return DatedWindow(start, end)
    if _DAILY.match(stripped):
        return parse_daily_window(stripped)
    raise ValueError(
        f"bad time window {text!r} (expected HH:MM-HH:MM, Sat 22:00-Sun 04:00, "
        "or 2026-12-24T18:00-2026-12-27T06:00)"
    )


def in_any(windows: tuple[Window, ...], now: dt.datetime) -> bool:
    return any(window.contains(now) for window in windows)


def polling_allowed(
    hours: tuple[DailyWindow, ...], downtime: tuple[Window, ...], now: dt.datetime
) -> bool:
    """Inside the polling period (all day when none is set) and outside every downtime."""
    if hours and not in_any(hours, now):
        return False
    return not in_any(downtime, now)


# --- when to poll next ------------------------------------------------------------------------

SEARCH_LIMIT = dt.timedelta(days=8)  # every daily or weekly window repeats within this


@dataclass(frozen=True)
class Backoff:
    """Consecutive failures so far, and the wait they call for: the one retry timer.

    `base` is the wait before any failure; after n failures it is base * 2**n, never
    above `cap` (nor below `base`). Immutable: `failed()` and `succeeded()` return new
    values, so a caller cannot share half-updated retry state and tests check the waits
    without sleeping. What each caller needs of it:

    - the agent (Git polls, a failed component, capabilities): `base` is the poll interval
      (or 5 s for retries), so the first retry comes after twice that; the caller spreads
      the wait with `jittered`, and a success goes back to the interval;
    - the outbox (status reports): `spread(rand)`, equal jitter between half and all of
      the wait, so a fleet that lost its WOS does not come back all at once; base 1 s: the
      first retry comes within 1 to 2 s;
    - downloads: `attempts` bounds the tries of one fetch (`exhausted`), inside its deadline.
    """

    base: float = 60.0
    cap: float = 900.0
    failures: int = 0
    attempts: int | None = None  # tries in all before giving up; None: the caller decides

    def failed(self) -> Backoff:
        return replace(self, failures=self.failures + 1)

    def succeeded(self) -> Backoff:
        return replace(self, failures=0)

    def delay(self) -> float:
        """`base` with no failures; doubled for each one; never above `cap` (nor below base)."""
        if not self.failures:
            return self.base
        return max(self.base, min(self.cap, self.base * 2.0 ** min(self.failures, 64)))

    def spread(self, rand: float) -> float:
        """`delay()` with equal jitter: between half and all of it; `rand` in [0, 1)."""
        full = self.delay()
        return full / 2 + full / 2 * rand

    @property
    def exhausted(self) -> bool:
        """Every one of `attempts` tries failed."""
        return self.attempts is not None and self.failures >= self.attempts


def jittered(seconds: float, jitter: float, rand: float) -> float:
    """`seconds` spread by up to ±`jitter` of itself; `rand` is uniform in [0, 1)."""
    return seconds * (1.0 + jitter * (2.0 * rand - 1.0))


def next_allowed(
    hours: tuple[DailyWindow, ...], downtime: tuple[Window, ...], start: dt.datetime
) -> dt.datetime | None:
    """The first minute from `start` on when polling is allowed; None when none is within
    eight days (every polling hour is inside a downtime)."""
    if polling_allowed(hours, downtime, start):
        return start
    moment = start.replace(second=0, microsecond=0)
    end = start + SEARCH_LIMIT
    while moment < end:
        moment += dt.timedelta(minutes=1)
        if polling_allowed(hours, downtime, moment):
            return moment
    return None


def next_poll(
    now: dt.datetime,
    *,
    interval: float,
    jitter: float,
    backoff: Backoff,
    hours: tuple[DailyWindow, ...] = (),
    downtime: tuple[Window, ...] = (),
    rand: float = 0.5,
) -> dt.datetime | None:
    """When to poll next: the interval (or the backoff after errors) with jitter, moved
    forward out of downtime and into the polling hours. At a window's start the fleet is
    spread over up to `jitter` of an interval, so devices do not all call at the same
    minute. None when polling is never allowed."""
    wait = jittered(backoff.delay() if backoff.failures else interval, jitter, rand)
    due = now + dt.timedelta(seconds=max(0.0, wait))
    allowed = next_allowed(hours, downtime, due)
    if allowed is None or allowed == due:
        return allowed
    return allowed + dt.timedelta(seconds=interval * jitter * rand)
